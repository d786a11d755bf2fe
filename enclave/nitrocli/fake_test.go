package nitrocli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitropod/nitropod/enclave"
)

// These tests run the nitrocli backend's real process runner against the
// FAKE nitro-cli in internal/fakenitrocli (see its doc for what it models
// of nitro-cli v1.5.0), because the real tool needs Nitro hardware.

var (
	fakeOnce sync.Once
	fakeBin  string
	fakeErr  error
	fakeDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fakeDir != "" {
		os.RemoveAll(fakeDir)
	}
	os.Exit(code)
}

// fakeBinary builds the fake nitro-cli once per test binary.
func fakeBinary(t *testing.T) string {
	t.Helper()
	fakeOnce.Do(func() {
		fakeDir, fakeErr = os.MkdirTemp("", "fake-nitro-cli")
		if fakeErr != nil {
			return
		}
		fakeBin = filepath.Join(fakeDir, "nitro-cli")
		out, err := exec.Command("go", "build", "-o", fakeBin, "./internal/fakenitrocli").CombinedOutput()
		if err != nil {
			fakeErr = fmt.Errorf("building the fake nitro-cli: %w\n%s", err, out)
		}
	})
	if fakeErr != nil {
		t.Fatal(fakeErr)
	}
	return fakeBin
}

// fakeNode is one fake Nitro host: the fake nitro-cli's state and the
// node's shared nitropod run directory.
type fakeNode struct {
	t     *testing.T
	bin   string
	state string // the fake's enclaves, calls.log, nitro_enclaves.log
	run   string // Config.StateDir
}

func newFakeNode(t *testing.T, bootDelay time.Duration) *fakeNode {
	n := &fakeNode{t: t, bin: fakeBinary(t), state: t.TempDir(), run: t.TempDir()}
	t.Setenv("FAKE_NITRO_CLI_STATE", n.state)
	t.Setenv("FAKE_NITRO_CLI_BOOT_DELAY", bootDelay.String())
	t.Setenv("FAKE_NITRO_CLI_HUNG_WAIT", "20ms")
	t.Setenv("NITRO_CLI_LOGS_PATH", n.state)
	t.Cleanup(n.shutdown)
	return n
}

func (n *fakeNode) backend(mod func(*Config)) *Backend {
	cfg := Config{Binary: n.bin, StateDir: n.run, KeepCgroup: true, PollInterval: 50 * time.Millisecond,
		RetryDelay: 50 * time.Millisecond, CleanupWait: 5 * time.Second, CleanupPoll: 20 * time.Millisecond,
		// No vsock here: the agent channel's listener is a loopback one.
		ListenVsock: func(uint32) (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }}
	if mod != nil {
		mod(&cfg)
	}
	return New(cfg)
}

// shutdown ends every fake enclave process: it waits for booting ones
// (they hold the heartbeat lock) and removes the enclaves, which makes
// their processes exit.
func (n *fakeNode) shutdown() {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		files, _ := filepath.Glob(filepath.Join(n.state, "enclaves", "*.json"))
		for _, f := range files {
			os.Remove(f)
		}
		if len(files) == 0 && !n.heartbeatBound() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.t.Error("fake enclave processes still booting after 10s")
}

// heartbeatBound reports whether a fake boot holds the heartbeat port
// (its flock, read from /proc/locks so that looking does not take it).
func (n *fakeNode) heartbeatBound() bool {
	var st syscall.Stat_t
	if syscall.Stat(filepath.Join(n.state, "vsock-9000.lock"), &st) != nil {
		return false
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		n.t.Fatal(err)
	}
	for _, l := range strings.Split(string(locks), "\n") {
		fs := strings.Fields(l)
		if len(fs) > 5 && fs[1] == "FLOCK" && strings.HasSuffix(fs[5], ":"+strconv.FormatUint(st.Ino, 10)) {
			return true
		}
	}
	return false
}

// enclaves lists the fake's enclaves as describe-enclaves would, answered
// or not.
func (n *fakeNode) enclaves() []string {
	files, _ := filepath.Glob(filepath.Join(n.state, "enclaves", "*.json"))
	var ids []string
	for _, f := range files {
		ids = append(ids, strings.TrimSuffix(filepath.Base(f), ".json"))
	}
	return ids
}

type call struct {
	at      time.Time
	cmd     string
	rustLog string
	cgroup  string
}

func (n *fakeNode) calls() []call {
	f, err := os.Open(filepath.Join(n.state, "calls.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	var cs []call
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue
		}
		ns, _ := strconv.ParseInt(fs[0], 10, 64)
		c := call{at: time.Unix(0, ns), cmd: fs[1]}
		for _, kv := range fs[2:] {
			if v, ok := strings.CutPrefix(kv, "RUST_LOG="); ok {
				c.rustLog = v
			}
			if v, ok := strings.CutPrefix(kv, "cgroup="); ok {
				c.cgroup = v
			}
		}
		cs = append(cs, c)
	}
	return cs
}

func (n *fakeNode) count(cmd string) int {
	c := 0
	for _, cl := range n.calls() {
		if cl.cmd == cmd {
			c++
		}
	}
	return c
}

func bootReq(t *testing.T, name string) enclave.Request {
	return enclave.Request{Name: name, EIFPath: eifFile(t, 1<<20), CPUs: 2, MemoryMiB: 512}
}

// Item 1: several launchers booting at once all get their enclave, one
// boot at a time (each binds the heartbeat port).
func TestFakeConcurrentBoots(t *testing.T) {
	n := newFakeNode(t, 300*time.Millisecond)
	const launchers = 3
	var wg sync.WaitGroup
	errs := make([]error, launchers)
	encs := make([]enclave.Enclave, launchers)
	for i := range launchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One Backend per launcher process; they share only StateDir.
			encs[i], errs[i] = n.backend(nil).Boot(context.Background(), bootReq(t, "pod-"+strconv.Itoa(i)))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("launcher %d: %v", i, err)
		}
	}
	if got := len(n.enclaves()); got != launchers {
		t.Errorf("fake lists %d enclaves, want %d", got, launchers)
	}
	if got := n.count("run-enclave"); got != launchers {
		t.Errorf("run-enclave ran %d times, want %d (no boot should have needed its retry)", got, launchers)
	}
	for _, e := range encs {
		if e != nil {
			if err := e.Terminate(context.Background()); err != nil {
				t.Error(err)
			}
		}
	}
	if ids := n.enclaves(); len(ids) != 0 {
		t.Errorf("enclaves left after Terminate: %v", ids)
	}
}

// Item 1: a boot that loses the heartbeat port to a nitro-cli outside the
// lock (E36, vsock bind error) is retried once.
func TestFakeRetryOnVsockBindError(t *testing.T) {
	n := newFakeNode(t, 50*time.Millisecond)
	hold := func(d time.Duration) {
		f, err := os.OpenFile(filepath.Join(n.state, "vsock-9000.lock"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(d, func() { f.Close() })
	}
	b := n.backend(func(c *Config) { c.RetryDelay = 400 * time.Millisecond })
	hold(200 * time.Millisecond)
	e, err := b.Boot(context.Background(), bootReq(t, "retried"))
	if err != nil {
		t.Fatalf("Boot after a lost heartbeat port: %v", err)
	}
	if got := n.count("run-enclave"); got != 2 {
		t.Errorf("run-enclave ran %d times, want 2 (one retry)", got)
	}
	_ = e.Terminate(context.Background())

	// Still bound at the retry: the second E36 is the error, no third try.
	hold(2 * time.Second)
	_, err = b.Boot(context.Background(), bootReq(t, "lost"))
	if err == nil || !strings.Contains(err.Error(), "[ E36 ] Enclave boot failure") {
		t.Errorf("Boot with the port held: %v, want the E36 error", err)
	}
	if got := n.count("run-enclave"); got != 4 {
		t.Errorf("run-enclave ran %d times in all, want 4", got)
	}
}

// Item 3: another enclave's process not answering makes describe-enclaves
// exit non-zero with a valid array; this enclave keeps running.
func TestFakeDescribeUnansweredKeepsRunning(t *testing.T) {
	n := newFakeNode(t, 10*time.Millisecond)
	b := n.backend(func(c *Config) { c.GiveUpAfter = 200 * time.Millisecond })
	mine, err := b.Boot(context.Background(), bootReq(t, "mine"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mine.Terminate(context.Background()) }()
	other, err := b.Boot(context.Background(), bootReq(t, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Terminate(context.Background()) }()
	if err := os.WriteFile(filepath.Join(n.state, "enclaves", other.ID()+".hung"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(n.bin, "describe-enclaves").Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 39 || !strings.Contains(string(out), mine.ID()) {
		t.Fatalf("fake describe-enclaves with a hung enclave process: %v, %s", err, out)
	}
	select {
	case <-mine.Done():
		t.Fatal("enclave reported stopped while another enclave's process did not answer")
	case <-time.After(time.Second): // 20 polls, 5× GiveUpAfter
	}
	before := n.count("describe-enclaves")
	// The other enclave's process answers again and this enclave really
	// ends: Done closes.
	if err := os.Remove(filepath.Join(n.state, "enclaves", other.ID()+".hung")); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(n.bin, "terminate-enclave", "--enclave-id", mine.ID()).CombinedOutput(); err != nil {
		t.Fatalf("terminating behind the backend's back: %v %s", err, out)
	}
	select {
	case <-mine.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the enclave was terminated")
	}
	if n.count("describe-enclaves") == before {
		t.Error("no describe-enclaves ran")
	}
}

// Item 4: a boot cancelled half-way leaves no enclave: the enclave process
// nitro-cli detached boots on, and what it boots is terminated.
func TestFakeCancelledBootLeavesNoEnclave(t *testing.T) {
	n := newFakeNode(t, 800*time.Millisecond)
	b := n.backend(nil)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	t0 := time.Now()
	_, err := b.Boot(ctx, bootReq(t, "cancelled"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Boot: %v", err)
	}
	// Look after the fake enclave process would have finished booting.
	time.Sleep(time.Until(t0.Add(1200 * time.Millisecond)))
	if ids := n.enclaves(); len(ids) != 0 || n.heartbeatBound() {
		t.Errorf("cancelled boot left enclaves %v (heartbeat port bound: %v)", ids, n.heartbeatBound())
	}
}

// Item 4: when run-enclave dies without concluding, the enclave its
// detached process boots is found by name and terminated.
func TestFakeKilledRunEnclaveCleanedUp(t *testing.T) {
	n := newFakeNode(t, 600*time.Millisecond)
	b := n.backend(func(c *Config) {
		real := c.Runner
		if real == nil {
			real = execRunner{bin: c.Binary}
		}
		c.Runner = killingRunner{Runner: real, when: n.heartbeatBound}
	})
	t0 := time.Now()
	_, err := b.Boot(context.Background(), bootReq(t, "killed"))
	if err == nil {
		t.Fatal("Boot succeeded although run-enclave was killed")
	}
	time.Sleep(time.Until(t0.Add(900 * time.Millisecond))) // the fake boot is done
	if ids := n.enclaves(); len(ids) != 0 || n.heartbeatBound() {
		t.Errorf("killed run-enclave left enclaves %v", ids)
	}
	if n.count("terminate-enclave") != 1 {
		t.Errorf("terminate-enclave ran %d times, want 1", n.count("terminate-enclave"))
	}
}

// killingRunner kills run-enclave once its enclave process is booting
// (when() turns true), as an OOM kill would.
type killingRunner struct {
	Runner
	when func() bool
}

func (k killingRunner) Output(ctx context.Context, args []string) ([]byte, []byte, error) {
	if args[0] == "run-enclave" {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			for ctx.Err() == nil && !k.when() {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
		}()
		return k.Runner.Output(ctx, args)
	}
	return k.Runner.Output(ctx, args)
}

// Item 5: the launchers of a node share one describe-enclaves per
// PollInterval, run with nitro-cli's log level at warn.
func TestFakePollingBounded(t *testing.T) {
	n := newFakeNode(t, 10*time.Millisecond)
	const launchers, interval, window = 4, 100 * time.Millisecond, 1500 * time.Millisecond
	var encs []enclave.Enclave
	for i := range launchers {
		e, err := n.backend(func(c *Config) { c.PollInterval = interval }).Boot(context.Background(), bootReq(t, "poll-"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		encs = append(encs, e)
	}
	t0 := time.Now()
	time.Sleep(window)
	t1 := time.Now()
	for _, e := range encs {
		if err := e.Terminate(context.Background()); err != nil {
			t.Error(err)
		}
	}
	var in []call
	for _, c := range n.calls() {
		if c.cmd == "describe-enclaves" && !c.at.Before(t0) && c.at.Before(t1) {
			in = append(in, c)
			if c.rustLog != "warn" {
				t.Errorf("describe-enclaves ran with RUST_LOG=%q, want warn", c.rustLog)
			}
		}
	}
	t.Logf("%d describe-enclaves calls in %v by %d launchers polling every %v", len(in), window, launchers, interval)
	// At most one call per interval node-wide (+1 for the window's edge);
	// unshared, the launchers would make about launchers×window/interval.
	if limit := int(window/interval) + 1; len(in) > limit || len(in) < 3 {
		t.Errorf("%d describe-enclaves calls in %v by %d launchers polling every %v; want at most %d (and some)", len(in), window, launchers, interval, limit)
	}
	// The mean gap, not each one: the times are the fake's start times,
	// and on a loaded machine one exec can start late and the next on time,
	// so two calls of consecutive intervals may land a few ms apart.
	// Unshared polling would average interval/launchers.
	if len(in) >= 2 {
		if mean := in[len(in)-1].at.Sub(in[0].at) / time.Duration(len(in)-1); mean < interval*8/10 {
			t.Errorf("describe-enclaves calls %v apart on average, want about %v", mean, interval)
		}
	}
	logb, _ := os.ReadFile(filepath.Join(n.state, "nitro_enclaves.log"))
	if strings.Contains(string(logb), "Describe") {
		t.Errorf("describe-enclaves logged at info level:\n%s", logb)
	}
}

// Item 2: nitro-cli and its enclave process run in the node-level cgroup,
// on cgroup v1 (every hierarchy) and v2 (clone3 into the cgroup). Needs
// root and writable cgroup mounts; the v2 case uses a cgroup2 mount of a
// hybrid host when the host is v1.
func TestFakeNodeCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	roots := map[string]string{}
	var st syscall.Statfs_t
	for _, r := range []string{DefaultCgroupRoot, filepath.Join(DefaultCgroupRoot, "unified")} {
		if syscall.Statfs(r, &st) != nil {
			continue
		}
		switch st.Type {
		case 0x63677270: // CGROUP2_SUPER_MAGIC
			roots["v2"] = r
		case 0x01021994: // TMPFS_MAGIC: v1 hierarchies below
			roots["v1"] = r
		}
	}
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			root, ok := roots[v]
			if !ok {
				t.Skipf("no cgroup %s mount here", v)
			}
			cg := fmt.Sprintf("nitropod-test-%d/enclaves", os.Getpid())
			n := newFakeNode(t, 10*time.Millisecond)
			t.Cleanup(func() { removeTestCgroup(t, root, cg) })
			b := n.backend(func(c *Config) { c.KeepCgroup, c.CgroupRoot, c.Cgroup = false, root, cg })
			e, err := b.Boot(context.Background(), bootReq(t, "cg"))
			if errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
				t.Skipf("cannot create cgroups here: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.Describe(context.Background()); err != nil {
				t.Error(err)
			}
			if err := e.Terminate(context.Background()); err != nil {
				t.Error(err)
			}
			// No thread of this process stays in the node cgroup (the
			// thread that forked nitro-cli ends; the main thread is never
			// that thread).
			tasks, _ := filepath.Glob("/proc/self/task/*/cgroup")
			for _, f := range tasks {
				if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), "/"+cg) {
					t.Errorf("thread %s of the test process is in the node cgroup:\n%s", filepath.Base(filepath.Dir(f)), b)
				}
			}
			seen := map[string]bool{}
			for _, c := range n.calls() {
				seen[c.cmd] = true
				for _, line := range strings.Split(c.cgroup, ";") {
					parts := strings.SplitN(line, ":", 3)
					if len(parts) != 3 || (v == "v2") != (parts[0] == "0") || v == "v1" && parts[1] == "" {
						continue // the other version's hierarchies
					}
					if parts[2] != "/"+cg {
						t.Errorf("%s ran in cgroup %q, want /%s", c.cmd, line, cg)
					}
				}
			}
			for _, cmd := range []string{"run-enclave", "enclave-process", "describe-enclaves", "terminate-enclave"} {
				if !seen[cmd] {
					t.Errorf("no %s call recorded", cmd)
				}
			}
		})
	}
}

// removeTestCgroup removes cg (and its parent directory) from every
// hierarchy under root once the fake's processes have left it.
func removeTestCgroup(t *testing.T, root, cg string) {
	dirs := []string{filepath.Join(root, cg)}
	if des, err := os.ReadDir(root); err == nil {
		for _, de := range des {
			dirs = append(dirs, filepath.Join(root, de.Name(), cg))
		}
	}
	for _, d := range dirs {
		for _, p := range []string{d, filepath.Dir(d)} {
			for i := 0; i < 100; i++ {
				if err := syscall.Rmdir(p); err == nil || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}

// A nitro-cli that could not even be started (here: a bad node cgroup)
// fails the boot at once: there is no enclave to wait for.
func TestFakeNotStartedFailsFast(t *testing.T) {
	n := newFakeNode(t, 10*time.Millisecond)
	b := n.backend(func(c *Config) { c.KeepCgroup, c.Cgroup = false, "../kubepods" })
	t0 := time.Now()
	_, err := b.Boot(context.Background(), bootReq(t, "bad-cgroup"))
	if err == nil || !strings.Contains(err.Error(), `nitro-cli cgroup "../kubepods"`) {
		t.Errorf("Boot with a bad cgroup: %v", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("Boot took %v to fail, want no cleanup wait", d)
	}
	if c := n.count("run-enclave"); c != 0 {
		t.Errorf("run-enclave ran %d times", c)
	}
}

// The shim's delete after a launcher died before it learnt the enclave ID
// terminates by the recorded name.
func TestFakeTerminateName(t *testing.T) {
	n := newFakeNode(t, 10*time.Millisecond)
	b := n.backend(nil)
	e, err := b.Boot(context.Background(), bootReq(t, "by-name"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.Boot(context.Background(), bootReq(t, "other"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.TerminateName(context.Background(), "by-name"); err != nil {
		t.Fatal(err)
	}
	if ids := n.enclaves(); len(ids) != 1 || ids[0] != other.ID() {
		t.Errorf("after TerminateName: enclaves %v, want only %s (not %s)", ids, other.ID(), e.ID())
	}
	if err := b.TerminateName(context.Background(), "no-such-enclave"); err != nil {
		t.Errorf("TerminateName of an absent name: %v", err)
	}
}
