package eifcache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nitropod/nitropod/eif"
)

// testEIF is a small well-formed EIF (written by package eif) whose
// ramdisk is payload.
func testEIF(payload []byte) []byte {
	f, err := os.CreateTemp("", "eifcache-test-*.eif")
	if err != nil {
		panic(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := eif.Write(f, eif.Image{
		Kernel:   bytes.NewReader([]byte("KERNEL")),
		Cmdline:  "console=ttyS0",
		Ramdisks: []io.Reader{bytes.NewReader([]byte("R0")), bytes.NewReader(payload)},
	}, eif.WriterOptions{}); err != nil {
		panic(err)
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		panic(err)
	}
	return b
}

func writer(payload []byte, calls *atomic.Int32) func(context.Context, io.Writer) error {
	return func(_ context.Context, w io.Writer) error {
		if calls != nil {
			calls.Add(1)
		}
		time.Sleep(50 * time.Millisecond) // widen the race window
		_, err := w.Write(testEIF(payload))
		return err
	}
}

func TestGetFillsOnceThenHits(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	key := Key("rootfs", "proc")
	e1, err := c.Get(context.Background(), key, writer([]byte("one"), &calls))
	if err != nil {
		t.Fatal(err)
	}
	defer e1.Release()
	e2, err := c.Get(context.Background(), key, writer([]byte("two"), &calls))
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Release()
	if diff := cmp.Diff([]bool{false, true}, []bool{e1.Hit, e2.Hit}); diff != "" {
		t.Errorf("hit flags (-want +got):\n%s", diff)
	}
	if calls.Load() != 1 {
		t.Errorf("fill ran %d times, want 1", calls.Load())
	}
	got, _ := os.ReadFile(e2.Path)
	if !bytes.Equal(got, testEIF([]byte("one"))) {
		t.Errorf("cached content changed on hit")
	}
	fi, err := os.Stat(e1.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("entry mode %v, want 0600", fi.Mode().Perm())
	}
	di, _ := os.Stat(c.Dir())
	if di.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", di.Mode().Perm())
	}
}

func TestConcurrentGetsFillOnce(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	var wg sync.WaitGroup
	hits := make([]bool, 8)
	for i := range hits {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := c.Get(context.Background(), Key("same"), writer([]byte("x"), &calls))
			if err != nil {
				t.Error(err)
				return
			}
			hits[i] = e.Hit
			e.Release()
		}()
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Errorf("fill ran %d times for 8 concurrent gets, want 1", calls.Load())
	}
	n := 0
	for _, h := range hits {
		if !h {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d gets reported a miss, want exactly 1", n)
	}
}

// TestHelperProcessGet is run as a subprocess by TestCrossProcessFillOnce.
// It signals "ready-<pid>", waits for the parent's "go" file (the start
// barrier), notes "entered-<pid>" and calls Get; a process that fills holds
// the fill until every helper has entered Get, so the others ask for the
// key while the fill runs. It writes "fill" or "hit" to "result-<pid>".
func TestHelperProcessGet(t *testing.T) {
	dir := os.Getenv("EIFCACHE_HELPER_DIR")
	if dir == "" {
		return
	}
	n, _ := strconv.Atoi(os.Getenv("EIFCACHE_HELPER_N"))
	pid := strconv.Itoa(os.Getpid())
	touch := func(name string) {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	count := func(pattern string) int {
		m, _ := filepath.Glob(filepath.Join(dir, pattern))
		return len(m)
	}
	waitFor := func(what string, ok func() bool) {
		for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("helper %s: waited 30s for %s", pid, what)
			}
		}
	}
	c, err := Open(filepath.Join(dir, "cache"), 0)
	if err != nil {
		t.Fatal(err)
	}
	touch("ready-" + pid)
	waitFor("the start barrier", func() bool { return count("go") == 1 })
	touch("entered-" + pid)
	e, err := c.Get(context.Background(), Key("xproc"), func(ctx context.Context, w io.Writer) error {
		touch("filling-" + pid)
		waitFor("every helper to enter Get", func() bool { return count("entered-*") == n })
		// (From entered-<pid> to the lock attempt is a few syscalls.)
		time.Sleep(100 * time.Millisecond)
		_, err := w.Write(testEIF([]byte("xproc")))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	result := "fill"
	if e.Hit {
		result = "hit"
	}
	e.Release()
	if err := os.WriteFile(filepath.Join(dir, "result-"+pid), []byte(result), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCrossProcessFillOnce starts three processes at once on one cache
// directory (a start barrier, and the filler waits for the others to ask
// for the same key): exactly one fills, the others wait and hit.
func TestCrossProcessFillOnce(t *testing.T) {
	const n = 3
	dir := t.TempDir()
	var cmds []*exec.Cmd
	for range n {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcessGet$")
		cmd.Env = append(os.Environ(), "EIFCACHE_HELPER_DIR="+dir, "EIFCACHE_HELPER_N="+strconv.Itoa(n))
		cmd.Stderr = os.Stderr
		cmd.Stdout = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	defer func() {
		for _, cmd := range cmds {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if m, _ := filepath.Glob(filepath.Join(dir, "ready-*")); len(m) == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the %d helpers did not all start within 30s", n)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper: %v", err)
		}
	}
	results := map[string]int{}
	m, _ := filepath.Glob(filepath.Join(dir, "result-*"))
	for _, f := range m {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		results[string(b)]++
	}
	fills, _ := filepath.Glob(filepath.Join(dir, "filling-*"))
	if want := map[string]int{"fill": 1, "hit": n - 1}; !cmp.Equal(results, want) || len(fills) != 1 {
		t.Errorf("%d racing processes: results %v, %d fills started; want %v and 1 fill", n, results, len(fills), want)
	}
}

func TestCorruptEntryIsRefilled(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	key := Key("corrupt")
	e, err := c.Get(context.Background(), key, writer([]byte("good payload"), nil))
	if err != nil {
		t.Fatal(err)
	}
	e.Release()
	// Flip a byte in the payload.
	b, _ := os.ReadFile(e.Path)
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(e.Path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	e2, err := c.Get(context.Background(), key, writer([]byte("good payload"), &calls))
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Release()
	if e2.Hit || calls.Load() != 1 || !strings.Contains(e2.Replaced, "crc mismatch") {
		t.Errorf("corrupt entry: hit=%v fills=%d replaced=%q, want a refill after a crc mismatch", e2.Hit, calls.Load(), e2.Replaced)
	}
	if err := VerifyCRC(e2.Path); err != nil {
		t.Errorf("refilled entry does not verify: %v", err)
	}
}

func TestFillErrorLeavesNothing(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	_, err = c.Get(context.Background(), Key("bad"), func(ctx context.Context, w io.Writer) error {
		_, _ = w.Write([]byte("partial"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	des, _ := os.ReadDir(c.Dir())
	for _, de := range des {
		if strings.HasSuffix(de.Name(), entrySuffix) || strings.HasPrefix(de.Name(), tempPrefix) {
			t.Errorf("left behind %s", de.Name())
		}
	}
	// A fill that writes garbage is rejected by the CRC check.
	_, err = c.Get(context.Background(), Key("garbage"), func(ctx context.Context, w io.Writer) error {
		_, err := w.Write(bytes.Repeat([]byte{1}, 600))
		return err
	})
	if err == nil {
		t.Fatal("garbage fill accepted")
	}
}

func TestLRUEvictionKeepsReferenced(t *testing.T) {
	payload := bytes.Repeat([]byte("p"), 1000)
	size := int64(len(testEIF(payload)))
	c, err := Open(t.TempDir(), 2*size+size/2) // room for two
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	get := func(k string) *Entry {
		t.Helper()
		e, err := c.Get(ctx, Key(k), writer(payload, nil))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	// Use times are set explicitly (an hour ago, then a second later), not
	// left to the clock's granularity; a Get marks an entry used now.
	used := func(e *Entry, at time.Time) {
		t.Helper()
		if err := os.Chtimes(e.Path, at, at); err != nil {
			t.Fatal(err)
		}
	}
	base := time.Now().Add(-time.Hour)
	a := get("a")
	a.Release()
	used(a, base)
	b := get("b") // held: must survive eviction
	used(b, base.Add(time.Second))
	a2 := get("a") // touch a: now b is least recently used, but referenced
	a2.Release()
	if fa, fb := mtime(t, a.Path), mtime(t, b.Path); !fb.Before(fa) {
		t.Fatalf("a Get did not mark a used: a %v, b %v", fa, fb)
	}
	d := get("d") // over the cap: evicts the LRU unreferenced one (a)
	d.Release()
	exists := func(e *Entry) bool { _, err := os.Stat(e.Path); return err == nil }
	got := map[string]bool{"a": exists(a), "b": exists(b), "d": exists(d)}
	want := map[string]bool{"a": false, "b": true, "d": true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("entries present after eviction (-want +got):\n%s", diff)
	}
	b.Release()
	if n, _ := c.Size(); n > 2*size+size/2 {
		t.Errorf("cache size %d over cap", n)
	}
}

func mtime(t *testing.T, path string) time.Time {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}

func TestKeyAndValidation(t *testing.T) {
	if Key("ab", "c") == Key("a", "bc") {
		t.Error("Key is not length-prefixed")
	}
	if a, b := Key("x"), Key("x"); a != b {
		t.Error("Key is not deterministic")
	}
	c, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"", "../x", ".hidden", strings.Repeat("a", 200)} {
		if _, err := c.Get(context.Background(), k, writer(nil, nil)); err == nil {
			t.Errorf("key %q accepted", k)
		}
	}
}

func TestGetHonoursContextWhileWaiting(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	release := make(chan struct{})
	go func() {
		e, err := c.Get(context.Background(), Key("slow"), func(ctx context.Context, w io.Writer) error {
			close(started)
			<-release
			_, err := w.Write(testEIF(nil))
			return err
		})
		if err == nil {
			e.Release()
		}
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = c.Get(ctx, Key("slow"), writer(nil, nil))
	close(release)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want deadline exceeded", err)
	}
}

func FuzzVerifyCRC(f *testing.F) {
	f.Add(testEIF([]byte("seed")))
	f.Add([]byte(".eif"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = verifyCRC(bytes.NewReader(b))
	})
}
