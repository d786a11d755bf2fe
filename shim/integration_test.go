package shim_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/ctrtest"
	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/images"
)

const (
	ns          = "nitrotest"
	busyboxRef  = "docker.io/library/busybox:latest"
	busybox2Ref = "docker.io/library/busybox2:latest"
)

// env is a private containerd with the nitro runtime installed.
type env struct{ *shimtest.Env }

func TestMain(m *testing.M) {
	code := m.Run()
	shimtest.RemoveShared()
	os.Exit(code)
}

func newEnv(t testing.TB, cri *ctrtest.CRIOptions) *env {
	t.Helper()
	return newEnvOpts(t, ctrtest.Options{CRI: cri})
}

// newEnvOpts is shimtest.Start with the binaries built once per test binary.
func newEnvOpts(t testing.TB, opts ctrtest.Options) *env {
	t.Helper()
	return &env{shimtest.Start(t, shimtest.Options{Shared: true, Containerd: opts})}
}

func busyboxImage(t testing.TB, extra string) v1.Image {
	t.Helper()
	bb := testenv.Binary(t, "busybox")
	img, err := images.Busybox(bb, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if extra == "" {
		return img
	}
	dir := t.TempDir()
	if err := images.BusyboxRootfs(bb, dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "variant"), []byte(extra), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err = images.FromDir(dir, v1.Config{Cmd: []string{"sh"}, Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// busyboxImageConfig is the busybox rootfs with the given image config.
func busyboxImageConfig(t testing.TB, cfg v1.Config) v1.Image {
	t.Helper()
	dir := t.TempDir()
	if err := images.BusyboxRootfs(testenv.Binary(t, "busybox"), dir); err != nil {
		t.Fatal(err)
	}
	img, err := images.FromDir(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func (e *env) importImage(t testing.TB, ctx context.Context, namespace, ref string, img v1.Image) {
	t.Helper()
	if err := e.Ctrd.Import(ctx, namespace, ref, img); err != nil {
		t.Fatal(err)
	}
}

// run is `ctr run --rm --runtime io.containerd.nitro.v1 IMAGE ID ARGS...`.
func (e *env) run(ctx context.Context, extra []string, image, id string, args ...string) *exec.Cmd {
	full := append([]string{"run", "--rm", "--runtime", nitropod.RuntimeType}, ctrCPUFlags()...)
	full = append(full, extra...)
	full = append(full, image, id)
	full = append(full, args...)
	return e.Ctrd.CtrCmd(ctx, ns, full...)
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// shimLog returns the shim log lines about container id (the shims log
// through containerd).
func (e *env) shimLog(id string) []string {
	var out []string
	for _, l := range strings.Split(e.Ctrd.Log(), "\n") {
		if strings.Contains(l, "id="+id) {
			out = append(out, l)
		}
	}
	return out
}

var durRe = regexp.MustCompile(`create_duration=([0-9.]+[a-zµ]+)`)

func (e *env) createInfo(t testing.TB, id string) (hit bool, build bool, create time.Duration) {
	t.Helper()
	for _, l := range e.shimLog(id) {
		if strings.Contains(l, "cache_hit=true") {
			hit = true
		}
		if strings.Contains(l, "building enclave image") {
			build = true
		}
		if m := durRe.FindStringSubmatch(l); m != nil {
			create, _ = time.ParseDuration(m[1])
		}
	}
	return hit, build, create
}

func TestCtrRunEnclave(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	// Record containerd's task events to check their order.
	events := e.Ctrd.CtrCmd(ctx, "", "events")
	var evOut strings.Builder
	var evMu sync.Mutex
	events.Stdout = writerFunc(func(p []byte) (int, error) {
		evMu.Lock()
		defer evMu.Unlock()
		return evOut.Write(p)
	})
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = events.Process.Kill(); _ = events.Wait() }()
	// The subscription is live once an event of ours shows up in it.
	for i := 0; ; i++ {
		if _, err := e.Ctrd.Ctr(ctx, ns, "namespaces", "label", ns, "events-probe="+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
		evMu.Lock()
		live := strings.Contains(evOut.String(), "/namespaces/update")
		evMu.Unlock()
		if live {
			break
		}
		if i == 100 {
			t.Fatal("ctr events saw no event within 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	t.Run("output and exit code", func(t *testing.T) {
		cmd := e.run(ctx, nil, busyboxRef, "out1", "sh", "-c", "echo hello from the enclave; echo to stderr >&2; exit 3")
		out, err := cmd.CombinedOutput()
		if code := exitCode(err); code != 3 {
			t.Fatalf("ctr run exit code %d (%v), want 3; output:\n%s", code, err, out)
		}
		for _, want := range []string{"hello from the enclave", "to stderr"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("output %q lacks %q", out, want)
			}
		}
		hit, build, _ := e.createInfo(t, "out1")
		if hit || !build {
			t.Errorf("first container: cache hit=%v build=%v, want a build", hit, build)
		}
		// Task events in containerd's documented order, with the app's status.
		var topics []string
		exitStatus := ""
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			evMu.Lock()
			lines := strings.Split(evOut.String(), "\n")
			evMu.Unlock()
			topics = nil
			for _, l := range lines {
				// "DATE TIME +0000 UTC NAMESPACE TOPIC JSON"
				topic := ""
				for _, f := range strings.Fields(l) {
					if strings.HasPrefix(f, "/tasks/") {
						topic = f
						break
					}
				}
				if topic == "" || !strings.Contains(l, `"out1"`) {
					continue
				}
				topics = append(topics, topic)
				if topic == "/tasks/exit" {
					if m := regexp.MustCompile(`"exit_status":(\d+)`).FindStringSubmatch(l); m != nil {
						exitStatus = m[1]
					}
				}
			}
			if len(topics) >= 4 {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		want := []string{"/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"}
		if strings.Join(topics, " ") != strings.Join(want, " ") {
			evMu.Lock()
			t.Errorf("task events for out1: %v, want %v; events:\n%s", topics, want, evOut.String())
			evMu.Unlock()
		}
		if exitStatus != "3" {
			t.Errorf("TaskExit exit_status %q, want 3", exitStatus)
		}
	})

	t.Run("second container of the same image is a cache hit", func(t *testing.T) {
		cmd := e.run(ctx, nil, busyboxRef, "out2", "sh", "-c", "echo hello from the enclave; echo to stderr >&2; exit 3")
		out, err := cmd.CombinedOutput()
		if code := exitCode(err); code != 3 {
			t.Fatalf("ctr run exit code %d (%v), want 3; output:\n%s", code, err, out)
		}
		hit, build, d1 := e.createInfo(t, "out2")
		_, _, d0 := e.createInfo(t, "out1")
		if !hit || build {
			t.Errorf("second container: cache hit=%v build=%v, want a hit without build", hit, build)
		}
		// The time is a measurement (make bench-shim), not a pass/fail
		// bound: on two shared cores a hit can be slowed past a build.
		t.Logf("create: %v with build, %v on a cache hit", d0, d1)
	})

	t.Run("kill is graceful", func(t *testing.T) {
		cmd := e.run(ctx, nil, busyboxRef, "term1", "sh", "-c", `trap "echo got TERM; exit 7" TERM; echo ready; while true; do sleep 0.2; done`)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 100)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		waitLine(t, lines, "ready", 3*time.Minute)
		if out, err := e.Ctrd.Ctr(ctx, ns, "task", "kill", "term1"); err != nil {
			t.Fatalf("ctr task kill: %v: %s", err, out)
		}
		waitLine(t, lines, "got TERM", time.Minute)
		err = cmd.Wait()
		if code := exitCode(err); code != 7 {
			t.Errorf("exit code after SIGTERM %d (%v), want 7 (the app's trap)", code, err)
		}
	})

	out, err := e.Ctrd.Ctr(ctx, ns, "task", "ls", "-q")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("ctr task ls after the runs: %q (%v), want none", out, err)
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func waitLine(t *testing.T, lines <-chan string, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	var seen []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("output ended before %q; got:\n%s", want, strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if strings.Contains(l, want) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q within %v; got:\n%s", want, timeout, strings.Join(seen, "\n"))
		}
	}
}
