package qemu_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/enclave/qemu"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

// backend returns a TCG backend with a private work directory.
func backend(t *testing.T) (*qemu.Backend, string) {
	t.Helper()
	testenv.Integration(t)
	bin := testenv.Binary(t, qemu.DefaultBinary)
	dir := t.TempDir()
	b, err := qemu.New(qemu.Config{Binary: bin, WorkDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checkClean(t, dir) })
	return b, dir
}

func run(t *testing.T, b enclave.Backend, req enclave.Request, rio enclave.RunIO) (enclave.ExitStatus, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if req.CPUs == 0 {
		req.CPUs = 1
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = 256
	}
	start := time.Now()
	rio.Progress = func(s string) { t.Logf("%6.2fs %s", time.Since(start).Seconds(), s) }
	st, err := enclave.Run(ctx, b, req, rio)
	t.Logf("%6.2fs exit %+v, %v", time.Since(start).Seconds(), st, err)
	return st, err
}

// The acceptance case: stdout, stderr and the exit code; production mode
// shows no console.
func TestExitCodeAndStdio(t *testing.T) {
	b, _ := backend(t)
	path := buildEIF(t, busybox(t, testimage.Cmd("sh", "-c", "echo hello; echo err >&2; exit 7")), false)
	var out, errb, con bytes.Buffer
	st, err := run(t, b, enclave.Request{EIFPath: path, Console: &con}, enclave.RunIO{Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	if st != (enclave.ExitStatus{Code: 7}) || out.String() != "hello\n" || errb.String() != "err\n" {
		t.Errorf("got status %+v stdout %q stderr %q, want 7, %q, %q", st, out.String(), errb.String(), "hello\n", "err\n")
	}
	if con.Len() != 0 {
		t.Errorf("production enclave showed its console:\n%s", con.String())
	}
}

// The image's env, working directory and non-root user reach the app;
// debug mode shows the kernel console.
func TestImageConfigAndDebugConsole(t *testing.T) {
	b, _ := backend(t)
	img := busybox(t,
		testimage.User("www-data"), testimage.WorkingDir("/var/www"), testimage.Env("GREETING=hi there"),
		testimage.Cmd("sh", "-c", `echo "$GREETING|$(pwd)|$(id -u):$(id -g)|$(cat index.html)"; echo "hosts:$(grep -c localhost /etc/hosts) $(hostname)"`))
	path := buildEIF(t, img, true)
	var out, con syncBuffer
	st, err := run(t, b, enclave.Request{EIFPath: path, Debug: true, Console: &con}, enclave.RunIO{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	want := "hi there|/var/www|33:33|hello from nitropod\nhosts:2 enclave\n"
	if st.Code != 0 || out.String() != want {
		t.Errorf("got status %+v stdout %q, want 0 and %q", st, out.String(), want)
	}
	if !strings.Contains(con.String(), "Linux version") {
		t.Errorf("debug console has no kernel messages:\n%s", con.String())
	}
}

// SIGTERM reaches the app, which traps it and exits 0.
func TestSignal(t *testing.T) {
	b, _ := backend(t)
	path := buildEIF(t, busybox(t, testimage.Cmd("sh", "-c",
		`trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done`)), false)
	sigs := make(chan os.Signal, 1)
	out := &notifyBuffer{want: "ready\n", ch: make(chan struct{})}
	go func() {
		select {
		case <-out.ch:
			sigs <- syscall.SIGTERM
		case <-time.After(3 * time.Minute):
		}
	}()
	st, err := run(t, b, enclave.Request{EIFPath: path}, enclave.RunIO{Stdout: out, Signals: sigs, GracePeriod: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 0 || out.String() != "ready\ngot TERM\n" {
		t.Errorf("got status %+v stdout %q, want 0 and the trap's output", st, out.String())
	}
}

// A published port reaches busybox httpd inside; 20 connections at once
// succeed. The app killed by SIGTERM reports 143.
func TestPortForwarding(t *testing.T) {
	b, _ := backend(t)
	page := strings.Repeat("nitropod enclave page\n", 5000)
	img := busybox(t, testimage.Cmd("httpd", "-f", "-p", "8080", "-h", "/var/www"))
	img = withFile(t, img, "var/www/file.txt", page)
	path := buildEIF(t, img, false)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := enclave.Start(ctx, b, enclave.Request{EIFPath: path, CPUs: 1, MemoryMiB: 256},
		enclave.RunIO{Publish: []enclave.PortMapping{{HostAddr: "127.0.0.1:0", EnclavePort: 8080}}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Terminate(context.Background()) }()
	url := "http://" + s.Published()[0].String() + "/file.txt"
	get := func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 || string(body) != page {
			return fmt.Errorf("GET %s: %s, %d bytes, want 200 and %d bytes", url, resp.Status, len(body), len(page))
		}
		return nil
	}
	// httpd may still be starting: retry the first request for a while.
	deadline := time.Now().Add(30 * time.Second)
	for err := get(); err != nil; err = get() {
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- get()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if err := s.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st, err := s.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if want := (enclave.ExitStatus{Code: 143, Signal: syscall.SIGTERM}); st != want {
		t.Errorf("httpd killed by SIGTERM: %+v, want %+v", st, want)
	}
}

// 50 MB of stdout arrive byte-identical.
func TestLargeOutput(t *testing.T) {
	b, _ := backend(t)
	const size = 50 << 20
	path := buildEIF(t, busybox(t, testimage.Cmd("sh", "-c", fmt.Sprintf("yes 'nitropod 0123456789 abcdefghijklmnopqrstuvwxyz' | head -c %d", size))), false)
	h := sha256.New()
	n := &countWriter{w: h}
	start := time.Now()
	st, err := run(t, b, enclave.Request{EIFPath: path}, enclave.RunIO{Stdout: n})
	if err != nil {
		t.Fatal(err)
	}
	line := []byte("nitropod 0123456789 abcdefghijklmnopqrstuvwxyz\n")
	want := sha256.New()
	for written := 0; written < size; written += len(line) {
		want.Write(line[:min(len(line), size-written)])
	}
	t.Logf("%d bytes in %v", n.n, time.Since(start))
	if st.Code != 0 || n.n != size || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		t.Errorf("got status %+v, %d bytes with sha256 %s; want 0, %d bytes with sha256 %s",
			st, n.n, hex.EncodeToString(h.Sum(nil)), size, hex.EncodeToString(want.Sum(nil)))
	}
}

// A command missing from the image is reported by init with its cause.
func TestInitFailureReported(t *testing.T) {
	b, _ := backend(t)
	path := buildEIF(t, busybox(t, testimage.Cmd("no-such-command")), false)
	_, err := run(t, b, enclave.Request{EIFPath: path}, enclave.RunIO{})
	var ie *agent.InitError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), `"no-such-command" not found in PATH`) {
		t.Errorf("got %v, want an init error naming the missing command", err)
	}
}

// Boot failures are clear errors and leave no QEMU process behind.
func TestBootErrors(t *testing.T) {
	b, dir := backend(t)
	good := buildEIF(t, busybox(t), false)
	// An EIF of over 32 MiB needs more than 128 MiB.
	random := make([]byte, 24<<20)
	rand.Read(random)
	big := buildEIF(t, withFile(t, busybox(t), "random.bin", string(random)), false)
	fi, err := os.Stat(big)
	if err != nil {
		t.Fatal(err)
	}

	corrupt := copyFile(t, good)
	gi, err := os.Stat(good)
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, corrupt, gi.Size()/2)

	noKernel := writeEIF(t, eif.Image{Kernel: strings.NewReader("this is not a kernel"), Cmdline: "console=ttyS0", Ramdisks: []io.Reader{strings.NewReader("")}})

	missing, err := qemu.New(qemu.Config{Binary: "/nonexistent/qemu-system-x86_64", WorkDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    enclave.Backend
		req  enclave.Request
		want string
	}{
		{"too little memory", b, enclave.Request{EIFPath: big, CPUs: 1, MemoryMiB: 128}, "at least 4× the EIF size"},
		{"below the minimum", b, enclave.Request{EIFPath: good, CPUs: 1, MemoryMiB: 32}, "at least 64 MiB"},
		// Enough for the 4× rule, too little for the emulated boot.
		{"too small for the kernel", b, enclave.Request{EIFPath: good, CPUs: 1, MemoryMiB: int((4*gi.Size() + (1 << 20) - 1) >> 20)}, "too small to boot this EIF in emulation"},
		{"corrupt eif", b, enclave.Request{EIFPath: corrupt, CPUs: 1, MemoryMiB: 256}, "is corrupt"},
		{"missing eif", b, enclave.Request{EIFPath: dir + "/nothing.eif", CPUs: 1, MemoryMiB: 256}, "no such file"},
		{"not a kernel", b, enclave.Request{EIFPath: noKernel, CPUs: 1, MemoryMiB: 256}, "qemu exited"},
		{"missing qemu", missing, enclave.Request{EIFPath: good, CPUs: 1, MemoryMiB: 256}, "not found (install qemu-system-x86"},
		{"no vcpu", b, enclave.Request{EIFPath: good, MemoryMiB: 256}, "at least 1 vCPU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := enclave.Run(ctx, tc.b, tc.req, enclave.RunIO{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			t.Logf("error: %v", err)
			if p := qemuProcesses(dir); len(p) != 0 {
				t.Errorf("qemu left running: %v", p)
			}
		})
	}
	if want := (4*fi.Size() + (1 << 20) - 1) >> 20; qemu.CheckMemory(int(want), fi.Size()) != nil || qemu.CheckMemory(int(want)-1, fi.Size()) == nil {
		t.Errorf("CheckMemory does not put the limit at 4× the EIF size (%d MiB)", want)
	}
}

// Terminate stops a running app's enclave at once and removes everything;
// a work directory too long for a unix socket path works; the EIF's bzImage
// boots without the unpacked-kernel cache.
func TestTerminate(t *testing.T) {
	testenv.Integration(t)
	dir := filepath.Join(t.TempDir(), strings.Repeat("long-directory-name-", 5))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// KernelCache "-": this test also covers booting the bzImage as it is.
	b, err := qemu.New(qemu.Config{Binary: testenv.Binary(t, qemu.DefaultBinary), WorkDir: dir, KernelCache: "-"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checkClean(t, dir) })
	path := buildEIF(t, busybox(t, testimage.Cmd("sh", "-c", "echo up; sleep 600")), false)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := enclave.Start(ctx, b, enclave.Request{EIFPath: path, CPUs: 1, MemoryMiB: 256}, enclave.RunIO{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Terminate(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := s.Wait()
	if err != nil || st.Code != 137 {
		t.Errorf("after Terminate: %+v, %v; want code 137 and no error", st, err)
	}
	select {
	case <-s.Enclave().Done():
	default:
		t.Error("enclave still running after Terminate")
	}
}

// QEMU dies with the process that booted it, even when that process is
// killed outright.
func TestOwnerDies(t *testing.T) {
	testenv.Integration(t)
	bin := testenv.Binary(t, qemu.DefaultBinary)
	dir := t.TempDir()
	path := buildEIF(t, busybox(t, testimage.Cmd("sleep", "600")), false)
	owner := exec.Command(os.Args[0], "-test.run", "^$")
	owner.Env = append(os.Environ(), ownerEnv+"="+path, "QEMU_BINARY="+bin, "QEMU_WORKDIR="+dir)
	stdout, err := owner.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = owner.Process.Kill(); _ = owner.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "booted\n" {
		t.Fatalf("owner: %q, %v", line, err)
	}
	if len(qemuProcesses(dir)) != 1 {
		t.Fatalf("want one qemu process for %s, have %v", dir, qemuProcesses(dir))
	}
	_ = owner.Process.Kill()
	_ = owner.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for len(qemuProcesses(dir)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("qemu outlived its owner: %v", qemuProcesses(dir))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// init reaps orphans while the app runs: a grandchild whose parent exited
// is reparented to init and must not stay a zombie.
func TestZombiesReaped(t *testing.T) {
	b, _ := backend(t)
	path := buildEIF(t, busybox(t, testimage.Cmd("sh", "-c",
		`sh -c 'sleep 0.2 & exit 0'; sleep 1.5; echo "zombies: $(cat /proc/[0-9]*/stat | grep -c ') Z ')"`)), false)
	var out bytes.Buffer
	st, err := run(t, b, enclave.Request{EIFPath: path}, enclave.RunIO{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 0 || out.String() != "zombies: 0\n" {
		t.Errorf("got %+v, %q; want 0 and no zombies", st, out.String())
	}
}

// The host's stdin reaches the app, and its end is the app's EOF.
func TestStdin(t *testing.T) {
	b, _ := backend(t)
	path := buildEIF(t, busybox(t, testimage.Cmd("sh", "-c", "head -n 1; wc -c")), false)
	in := "first line\n" + strings.Repeat("x", 1<<20)
	var out bytes.Buffer
	st, err := run(t, b, enclave.Request{EIFPath: path}, enclave.RunIO{Stdin: strings.NewReader(in), Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	// head may read ahead of its line; wc counts what it left.
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if st.Code != 0 || len(lines) != 2 || lines[0] != "first line" {
		t.Fatalf("got %+v, %q; want the first line and a byte count", st, out.String())
	}
	if n, err := strconv.Atoi(strings.TrimSpace(lines[1])); err != nil || n > 1<<20 || n < (1<<20)-(64<<10) {
		t.Errorf("wc -c counted %q of the %d bytes after the first line", lines[1], 1<<20)
	}
}

// A guest that never sends its heartbeat (here: QEMU started with its vCPUs
// stopped, -S) is booted afresh once, within the one boot timeout, and then
// reported with the number of attempts; nothing is left behind.
func TestHungBootIsRetried(t *testing.T) {
	testenv.Integration(t)
	dir := t.TempDir()
	var mu sync.Mutex
	var steps []string
	b, err := qemu.New(qemu.Config{
		Binary:       testenv.Binary(t, qemu.DefaultBinary),
		WorkDir:      dir,
		BootTimeout:  6 * time.Second,
		BootAttempts: 2,
		ExtraArgs:    []string{"-S"},
		Trace: func(step string) {
			mu.Lock()
			steps = append(steps, step)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checkClean(t, dir) })
	path := buildEIF(t, busybox(t, testimage.Cmd("true")), false)
	_, err = b.Boot(context.Background(), enclave.Request{EIFPath: path, CPUs: 1, MemoryMiB: 256})
	if err == nil || !strings.Contains(err.Error(), "after 2 boot attempts") || !strings.Contains(err.Error(), "no heartbeat") {
		t.Fatalf("Boot of a hung guest: %v; want an error naming 2 attempts and the missing heartbeat", err)
	}
	mu.Lock()
	defer mu.Unlock()
	started, retries := 0, 0
	for _, s := range steps {
		switch s {
		case qemu.TraceStarted:
			started++
		case qemu.TraceRetry:
			retries++
		}
	}
	if started != 2 || retries != 1 {
		t.Errorf("trace %q: want qemu started twice and one retry", steps)
	}
}
