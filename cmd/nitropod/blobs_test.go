package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/internal/emublobs"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

// openPTY opens a pseudo-terminal pair: the controlling side, read by the
// test, and the terminal a child process writes to.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	ptm = os.NewFile(uintptr(fd), "/dev/ptmx")
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ptm.Close(); pts.Close() })
	return ptm, pts
}

// runOn runs cmd with stdout on a pipe and stderr on a pipe, or on a
// pseudo-terminal when tty; it returns both outputs and the exit code.
func runOn(t *testing.T, cmd *exec.Cmd, tty bool) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	var wg sync.WaitGroup
	if tty {
		ptm, pts := openPTY(t)
		cmd.Stderr = pts
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(&errb, ptm) // ends with EIO once the child and we closed pts
		}()
		err := cmd.Start()
		pts.Close()
		if err != nil {
			t.Fatal(err)
		}
	} else {
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	err := cmd.Wait()
	wg.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return out.String(), strings.ReplaceAll(errb.String(), "\r\n", "\n"), code
}

// installed is nitropod as a user installs it: the binary built from this
// source and nitropod-init side by side in a directory outside the
// repository, run from another directory outside it, with an empty data
// home (no blob set) and nothing of the repository in its environment.
type installed struct {
	nitropod, data, cache, work string
}

func install(t *testing.T) installed {
	t.Helper()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "nitropod"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	init, err := os.ReadFile(testenv.Binary(t, "nitropod-init"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "nitropod-init"), init, 0o755); err != nil {
		t.Fatal(err)
	}
	in := installed{nitropod: filepath.Join(bin, "nitropod"), data: filepath.Join(tmp, "data"),
		cache: filepath.Join(tmp, "cache"), work: filepath.Join(tmp, "work")}
	for _, d := range []string{in.data, in.cache, in.work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return in
}

func (in installed) command(args ...string) *exec.Cmd {
	cmd := exec.Command(in.nitropod, args...)
	cmd.Dir = in.work
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NITROPOD_BLOBS", "NITROPOD_INIT", "NITROPOD_OUTPUT", "XDG_DATA_HOME", "XDG_CACHE_HOME":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "XDG_DATA_HOME="+in.data, "XDG_CACHE_HOME="+in.cache)
	cmd.Env = env
	return cmd
}

// Without a blob set, run fails before doing anything and names the
// command that prepares it.
func TestRunWithoutBlobsNamesPrepare(t *testing.T) {
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	t.Setenv(emublobs.EnvDir, "")
	if emublobs.Default() != emublobs.UserDir() {
		t.Skipf("a system-wide blob set exists in %s", emublobs.SystemDir)
	}
	root := newRootCommand()
	root.SetArgs([]string{"run", "--oci-layout", t.TempDir(), "--init", "/bin/true"})
	root.SetOut(io.Discard)
	err := root.Execute()
	want := "no emulation blob set in " + filepath.Join(data, "nitropod", "blobs", "emu") + ": run `nitropod blobs prepare`"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("run without a blob set: %v; want %q", err, want)
	}
}

// An installed nitropod, outside the repository: run without a blob set
// names `nitropod blobs prepare`; that command makes the set from the
// (cached) Debian package at the standard place, printing only its path on
// a pipe and progress on a terminal; then run builds and boots an image
// with nitropod-init found next to the binary, quiet on a pipe, with
// progress on a terminal.
func TestInstalledRunOutsideRepo(t *testing.T) {
	testenv.Integration(t)
	testenv.Binary(t, "qemu-system-x86_64")
	home, _ := os.UserHomeDir()
	debCache := os.Getenv("NITROPOD_CACHE")
	if debCache == "" {
		debCache = filepath.Join(home, ".cache", "nitropod")
	}
	if _, err := os.Stat(filepath.Join(debCache, emublobs.Package+"_"+emublobs.Version+"_amd64.deb")); err != nil {
		testenv.Missing(t, "the pinned kernel package in %s (make emu-kernel downloads it): %v", debCache, err)
	}
	in := install(t)
	layout := testimage.WriteOCILayout(t, testimage.Busybox(t), t.TempDir())
	blobs := filepath.Join(in.data, "nitropod", "blobs", "emu")

	_, stderr, code := runOn(t, in.command("run", "--oci-layout", layout, "--", "echo", "hi"), false)
	if code != 1 || !strings.Contains(stderr, "run `nitropod blobs prepare`") || !strings.Contains(stderr, blobs) {
		t.Fatalf("run without a blob set: exit %d, stderr %q; want 1 and the prepare command", code, stderr)
	}

	prep := in.command("blobs", "prepare", "--cache-dir", debCache)
	stdout, stderr, code := runOn(t, prep, false)
	if code != 0 || stdout != blobs+"\n" || stderr != "" {
		t.Fatalf("blobs prepare on a pipe: exit %d, stdout %q, stderr %q; want 0, the path only, nothing", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(blobs, "bzImage")); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code = runOn(t, in.command("blobs", "prepare", "--cache-dir", debCache), true)
	if code != 0 || stdout != blobs+"\n" || !strings.Contains(stderr, "is up to date") {
		t.Fatalf("blobs prepare on a terminal: exit %d, stdout %q, stderr %q; want progress on the terminal", code, stdout, stderr)
	}

	stdout, stderr, code = runOn(t, in.command("run", "--cpus", "1", "--oci-layout", layout, "--", "echo", "hi"), false)
	if code != 0 || stdout != "hi\n" || stderr != "" {
		t.Fatalf("run on a pipe: exit %d, stdout %q, stderr %q; want 0, hi, and no progress", code, stdout, stderr)
	}
	stdout, stderr, code = runOn(t, in.command("run", "--cpus", "1", "--no-cache", "--oci-layout", layout, "--", "echo", "hi"), true)
	if code != 0 || stdout != "hi\n" {
		t.Fatalf("run on a terminal: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	for _, want := range []string{"nitropod: [", "building EIF", "booting enclave", "ready: app started"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("run on a terminal: stderr %q lacks progress %q", stderr, want)
		}
	}
}
