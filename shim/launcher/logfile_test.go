package launcher

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

func logSizes(t *testing.T, p string) (cur, old int64) {
	t.Helper()
	if fi, err := os.Stat(p); err == nil {
		cur = fi.Size()
	}
	if fi, err := os.Stat(p + ".1"); err == nil {
		old = fi.Size()
	}
	return cur, old
}

// TestLogWriterCap writes forty times the cap and checks after every write
// that the two files stay within it and that the tail is the newest output.
func TestLogWriterCap(t *testing.T) {
	const limit = 64 << 10
	p := filepath.Join(t.TempDir(), LogFile)
	w, err := OpenLog(p, limit)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var all bytes.Buffer
	for i := 0; all.Len() < 40*limit; i++ {
		line := fmt.Sprintf("console line %d %s\n", i, bytes.Repeat([]byte{'a' + byte(i%26)}, i%300))
		if n, err := w.Write([]byte(line)); err != nil || n != len(line) {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
		all.WriteString(line)
		if cur, old := logSizes(t, p); cur+old > limit {
			t.Fatalf("after %d bytes the log holds %d+%d bytes, more than %d", all.Len(), cur, old, limit)
		}
	}
	for _, n := range []int64{100, limit / 2, limit / 4 * 3} {
		got, err := ReadLogTail(p, n)
		if err != nil {
			t.Fatal(err)
		}
		// Everything kept, up to n, is the newest output; at least
		// half the cap (less one line) is always kept.
		if int64(len(got)) > n || int64(len(got)) < min(n, limit/2-400) {
			t.Errorf("tail of %d bytes has %d", n, len(got))
		}
		want := all.Bytes()[all.Len()-len(got):]
		if !bytes.Equal(got, want) {
			t.Errorf("tail of %d bytes is not the newest output:\n got ...%q\nwant ...%q", n, got[max(len(got)-60, 0):], want[max(len(want)-60, 0):])
		}
	}
	// One write larger than a file keeps its own tail.
	big := bytes.Repeat([]byte("0123456789"), limit/5)
	if _, err := w.Write(big); err != nil {
		t.Fatal(err)
	}
	if cur, old := logSizes(t, p); cur+old > limit {
		t.Fatalf("after a %d-byte write the log holds %d+%d bytes", len(big), cur, old)
	}
	if got, _ := ReadLogTail(p, 1000); !bytes.Equal(got, big[len(big)-1000:]) {
		t.Errorf("tail after a large write is not its end")
	}
	// Reopening an oversized log (a launcher restarted on old files) rotates it.
	w.Close()
	if err := os.WriteFile(p, bytes.Repeat([]byte("x"), limit), 0o600); err != nil {
		t.Fatal(err)
	}
	w2, err := OpenLog(p, limit)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w2.Write([]byte("new\n")); err != nil {
		t.Fatal(err)
	}
	w2.Close()
	if cur, old := logSizes(t, p); cur != 4 || old != limit {
		t.Errorf("reopened oversized log: %d+%d bytes, want 4 + the old %d in .1", cur, old, limit)
	}
}

// TestLogWriterChildFlood: a child process with the log as its stdout
// (QEMU with the debug console) writes through the cap, not to the file.
func TestLogWriterChildFlood(t *testing.T) {
	const limit = 256 << 10
	p := filepath.Join(t.TempDir(), LogFile)
	w, err := OpenLog(p, limit)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ { // the logger writes at the same time
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 2000; j++ {
				fmt.Fprintf(w, "launcher %d\n", j)
			}
		}()
	}
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 200 ]; do head -c 100000 /dev/zero | tr '\\0' x; i=$((i+1)); done; echo THE-END")
	cmd.Stdout = w
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	cur, old := logSizes(t, p)
	if cur+old > limit {
		t.Fatalf("a 20 MB console flood left %d+%d bytes, more than %d", cur, old, limit)
	}
	tail, err := ReadLogTail(p, 64<<10)
	if err != nil || !bytes.Contains(tail, []byte("THE-END")) {
		t.Errorf("tail (%v) lacks the console's last line", err)
	}
}
