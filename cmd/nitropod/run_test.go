package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

// runEnv is what `nitropod run` needs in the integration tests: the built
// binaries (make build), the emulation blob set and QEMU.
type runEnv struct {
	nitropod, init, blobs, cache string
}

func newRunEnv(t *testing.T) runEnv {
	t.Helper()
	testenv.Integration(t)
	testenv.Binary(t, "qemu-system-x86_64")
	return runEnv{
		nitropod: testenv.Binary(t, "nitropod"),
		init:     testenv.Binary(t, "nitropod-init"),
		blobs:    testenv.EmuBlobs(t),
		cache:    t.TempDir(),
	}
}

func (e runEnv) command(args ...string) *exec.Cmd {
	full := append([]string{"run", "--blobs", e.blobs, "--init", e.init, "--cpus", "1"}, args...)
	cmd := exec.Command(e.nitropod, full...)
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+e.cache)
	return cmd
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	t.Fatal(err)
	return -1
}

// cachedEIFs maps the cached EIFs to their inode numbers (a rebuilt entry
// is a new file renamed into place).
func cachedEIFs(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	m := map[string]uint64{}
	files, _ := filepath.Glob(filepath.Join(dir, "nitropod", "*.eif"))
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		m[f] = fi.Sys().(*syscall.Stat_t).Ino
	}
	return m
}

// `nitropod run` passes stdout, stderr and the exit code through, and the
// second run of the same image boots the cached EIF.
func TestRunCLI(t *testing.T) {
	e := newRunEnv(t)
	layout := testimage.WriteOCILayout(t, testimage.Busybox(t), t.TempDir())
	var first map[string]uint64
	for i := range 2 {
		cmd := e.command("--oci-layout", layout, "--", "sh", "-c", "echo hello; echo err >&2; exit 7")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		code := exitCode(t, cmd.Run())
		t.Logf("run %d: %v", i, time.Since(start))
		if code != 7 || out.String() != "hello\n" || errb.String() != "err\n" {
			t.Fatalf("run %d: exit %d stdout %q stderr %q; want 7, %q, %q", i, code, out.String(), errb.String(), "hello\n", "err\n")
		}
		cached := cachedEIFs(t, e.cache)
		if len(cached) != 1 {
			t.Fatalf("run %d: cache holds %v, want one EIF", i, cached)
		}
		if i == 0 {
			first = cached
		} else {
			for f, ino := range cached {
				if first[f] != ino {
					t.Errorf("the second run rebuilt the EIF %s", f)
				}
			}
		}
	}
	// --eif boots a prebuilt EIF (here the cached one) as it is.
	for f := range first {
		cmd := e.command("--eif", f)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if code := exitCode(t, cmd.Run()); code != 7 || out.String() != "hello\n" {
			t.Errorf("--eif: exit %d stdout %q stderr %q; want 7 and %q", code, out.String(), errb.String(), "hello\n")
		}
	}
}

// Ctrl-C (SIGINT to nitropod) reaches the app as SIGTERM; the app traps it
// and exits 0, and so does nitropod.
func TestRunCLIInterrupt(t *testing.T) {
	e := newRunEnv(t)
	layout := testimage.WriteOCILayout(t, testimage.Busybox(t), t.TempDir())
	cmd := e.command("--oci-layout", layout, "--", "sh", "-c",
		`trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done`)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	r := bufio.NewReader(stdout)
	line, err := r.ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("first line %q, %v; want ready (stderr: %s)", line, err, errb.String())
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	code := exitCode(t, cmd.Wait())
	if code != 0 || string(rest) != "got TERM\n" {
		t.Errorf("after Ctrl-C: exit %d, output %q; want 0 and %q (stderr: %s)", code, rest, "got TERM\n", errb.String())
	}
}

// listeningPort waits until process pid listens on a loopback TCP port and
// returns it: `--publish 0:PORT` lets the kernel choose the host port, and
// the process's own sockets (/proc/PID/fd and /proc/PID/net/tcp) say which.
func listeningPort(t *testing.T, pid int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if ports := listening(pid); len(ports) == 1 {
			return ports[0]
		} else if len(ports) > 1 {
			t.Fatalf("process %d listens on %d ports %v; want the one published", pid, len(ports), ports)
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d does not listen on a TCP port after %s", pid, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listening lists the 127.0.0.1 TCP ports in LISTEN state whose sockets
// process pid holds.
func listening(pid int) []int {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	inodes := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return nil
	}
	var ports []int
	for _, line := range strings.Split(string(data), "\n")[1:] {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
			continue
		}
		host, port, ok := strings.Cut(f[1], ":")
		if !ok || host != "0100007F" { // 127.0.0.1, little-endian hex
			continue
		}
		if p, err := strconv.ParseUint(port, 16, 16); err == nil {
			ports = append(ports, int(p))
		}
	}
	return ports
}

// `nitropod run -f` takes a Pod manifest: httpd answers on the published
// port, debug mode (ANJ_ENCLAVE_DEBUG_MODE=yes) shows the kernel console,
// and SIGTERM ends httpd (exit 143).
func TestRunCLIPodManifest(t *testing.T) {
	e := newRunEnv(t)
	layout := testimage.WriteOCILayout(t, testimage.Busybox(t), t.TempDir())
	pod := `apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    nitro.k8s.anjuna.io/managed: "yes"
spec:
  containers:
  - name: web
    image: busybox:latest
    command: ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    env:
    - name: ANJ_ENCLAVE_DEBUG_MODE
      value: "yes"
    resources:
      limits:
        memory: "256Mi"
        cpu: "1"
    ports:
    - containerPort: 80
`
	manifest := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(manifest, []byte(pod), 0o644); err != nil {
		t.Fatal(err)
	}
	// Host port 0: the kernel picks a free one (no listen-then-close race).
	cmd := e.command("-f", manifest, "--oci-layout", layout, "--publish", "0:80")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	port := listeningPort(t, cmd.Process.Pid, 3*time.Minute)
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/index.html"
	deadline := time.Now().Add(3 * time.Minute)
	var body []byte
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v (stderr: %s)", url, err, errb.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
	if string(body) != "hello from nitropod\n" {
		t.Errorf("GET %s = %q, want the image's index.html", url, body)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := exitCode(t, cmd.Wait())
	if code != 143 {
		t.Errorf("httpd after SIGTERM: exit %d, want 143", code)
	}
	if !strings.Contains(errb.String(), "Linux version") {
		t.Errorf("debug mode: no kernel console on stderr:\n%s", errb.String())
	}
}

// listening finds a port this process listens on (the helper the published
// port test relies on).
func TestListening(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	want := l.Addr().(*net.TCPAddr).Port
	got := listening(os.Getpid())
	found := false
	for _, p := range got {
		found = found || p == want
	}
	if !found {
		t.Errorf("listening(self) = %v; want it to include %d", got, want)
	}
}
