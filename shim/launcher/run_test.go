package launcher

import (
	"bufio"
	"context"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// created runs Run up to the created state: FIFOs with readers, pipes.
func created(t *testing.T) (spec Spec, startW *os.File, readyR *os.File, run func(sigs chan os.Signal) chan int) {
	t.Helper()
	dir := t.TempDir()
	spec = Spec{ID: "c", Bundle: dir, EIFPath: filepath.Join(dir, "x.eif"), CPUs: 1, MemoryMiB: 64,
		Backend: BackendConfig{Name: "qemu", StateDir: dir}, Stdout: filepath.Join(dir, "out"), Stderr: filepath.Join(dir, "err")}
	for _, p := range []string{spec.Stdout, spec.Stderr} {
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
	}
	startR, startW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { startR.Close(); startW.Close(); readyR.Close() })
	run = func(sigs chan os.Signal) chan int {
		code := make(chan int, 1)
		go func() {
			code <- Run(context.Background(), spec, startR, readyW, sigs, log.New(io.Discard, "", 0), io.Discard)
		}()
		return code
	}
	return spec, startW, readyR, run
}

// readers keeps one buffered reader per pipe, so that consecutive lines
// are read from the same buffer.
var readers = map[io.Reader]*bufio.Reader{}

// readyLine reads the launcher's next status line ("" at EOF).
func readyLine(t *testing.T, r io.Reader) string {
	t.Helper()
	br, ok := readers[r]
	if !ok {
		br = bufio.NewReader(r)
		readers[r] = br
	}
	l, err := br.ReadString('\n')
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return strings.TrimSpace(l)
}

func TestRunNotStarted(t *testing.T) {
	_, startW, readyR, run := created(t)
	code := run(make(chan os.Signal))
	if l := readyLine(t, readyR); l != "ok" {
		t.Fatalf("ready line %q, want ok", l)
	}
	startW.Close() // the shim went away before Start
	select {
	case c := <-code:
		if c != ExitNotStarted {
			t.Errorf("exit code %d, want %d", c, ExitNotStarted)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("launcher did not exit when the start pipe closed")
	}
}

func TestRunSignalBeforeStart(t *testing.T) {
	_, _, readyR, run := created(t)
	sigs := make(chan os.Signal, 1)
	code := run(sigs)
	if l := readyLine(t, readyR); l != "ok" {
		t.Fatalf("ready line %q, want ok", l)
	}
	sigs <- syscall.SIGTERM
	select {
	case c := <-code:
		if c != 128+int(syscall.SIGTERM) {
			t.Errorf("exit code %d, want %d", c, 128+int(syscall.SIGTERM))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("launcher did not exit on SIGTERM before start")
	}
}

func TestRunReportsSetupErrors(t *testing.T) {
	spec, _, readyR, _ := created(t)
	spec.Stdout = filepath.Join(spec.Bundle, "missing-fifo")
	readyR2, readyW2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer readyR2.Close()
	readyR.Close()
	code := Run(context.Background(), spec, strings.NewReader(""), readyW2, nil, log.New(io.Discard, "", 0), io.Discard)
	if code != ExitSetupFailed {
		t.Errorf("exit code %d, want %d", code, ExitSetupFailed)
	}
	if l := readyLine(t, readyR2); !strings.HasPrefix(l, "error: ") || !strings.Contains(l, "missing-fifo") {
		t.Errorf("ready line %q, want an error naming the fifo", l)
	}
}

// TestRunReportsStartErrors: a boot that fails after Start is reported on
// the status pipe as "error: …" (the shim's Start returns it), and the pipe
// then closes.
func TestRunReportsStartErrors(t *testing.T) {
	_, startW, readyR, run := created(t)
	code := run(make(chan os.Signal))
	if l := readyLine(t, readyR); l != "ok" {
		t.Fatalf("ready line %q, want ok", l)
	}
	if _, err := startW.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	l := readyLine(t, readyR)
	if !strings.HasPrefix(l, "error: starting enclave: ") || !strings.Contains(l, "x.eif") {
		t.Errorf("status line after start %q, want an error naming the EIF", l)
	}
	if l := readyLine(t, readyR); l != "" {
		t.Errorf("status pipe still open after the error: %q", l)
	}
	select {
	case c := <-code:
		if c != ExitSetupFailed {
			t.Errorf("exit code %d, want %d", c, ExitSetupFailed)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("launcher did not exit after a failed start")
	}
}
