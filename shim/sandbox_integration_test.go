package shim_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/ctrtest"
	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/images"
)

// criEnv is a private containerd with CRI and the nitro handler, no CNI
// (Pods get a loopback-only network namespace), the pause and busybox
// images imported.
type criEnv struct {
	*env
	cc  crictl
	dir string
}

func newCRIEnv(t *testing.T, ctx context.Context) *criEnv {
	t.Helper()
	cc := crictl{bin: testenv.Binary(t, "crictl")}
	testenv.Binary(t, "nsenter")
	dir := t.TempDir()
	cniConf := filepath.Join(dir, "net.d")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cniConf, "10-nitrotest.conflist"), []byte(fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "nitrotest",
  "plugins": [
    {"type": "bridge", "bridge": "nitrotest1", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.251.78.0/24"}]]}}
  ]
}`, filepath.Join(dir, "ipam"))), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnvOpts(t, ctrtest.Options{NetNS: true, CRI: &ctrtest.CRIOptions{
		SandboxImage:   pauseRef,
		Runtimes:       map[string]string{nitropod.RuntimeClassName: nitropod.RuntimeType},
		PodAnnotations: []string{"nitro.k8s.anjuna.io/*", "nitropod.io/*"},
		CNIConfDir:     cniConf,
	}})
	cc.sock, cc.netns = e.Ctrd.Socket, e.Ctrd.NetNSPath
	pause, err := images.Pause(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e.importImage(t, ctx, criNS, pauseRef, pause)
	e.importImage(t, ctx, criNS, busyboxRef, busyboxImage(t, ""))
	// CRI learns of imported images from events, asynchronously.
	deadline := time.Now().Add(30 * time.Second)
	for _, ref := range []string{pauseRef, busyboxRef} {
		for {
			if _, err := cc.run(ctx, "inspecti", ref); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("CRI does not see the imported image %s: %v", ref, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return &criEnv{env: e, cc: cc, dir: dir}
}

// criPod is one Pod sandbox run with the nitro handler.
type criPod struct {
	id, cfg string
}

// runPod runs a Pod sandbox whose config is extended by linux (the
// PodSandboxConfig's linux section); it is stopped and removed at cleanup.
func (c *criEnv) runPod(t *testing.T, ctx context.Context, name string, linux map[string]any) criPod {
	t.Helper()
	if linux == nil {
		linux = map[string]any{}
	}
	cfg := writeJSON(t, filepath.Join(c.dir, name+"-pod.json"), map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": name + "-uid", "attempt": 0},
		"log_directory": filepath.Join(c.dir, name+"-logs"),
		"linux":         linux,
	})
	id, err := c.cc.run(ctx, "runp", "--runtime", nitropod.RuntimeClassName, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, _ = c.cc.run(cc, "stopp", id)
		_, _ = c.cc.run(cc, "rmp", "-f", id)
	})
	return criPod{id: id, cfg: cfg}
}

// createContainer creates (not starts) a busybox container running command
// in the Pod; linux is the ContainerConfig's linux section.
func (c *criEnv) createContainer(t *testing.T, ctx context.Context, pod criPod, name string, command []string, linux map[string]any) string {
	t.Helper()
	if linux == nil {
		linux = map[string]any{}
	}
	cfg := writeJSON(t, filepath.Join(c.dir, name+"-ctr.json"), map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": busyboxRef},
		"command":  command,
		"log_path": name + ".log",
		"linux":    linux,
	})
	id, err := c.cc.run(ctx, "create", pod.id, cfg, pod.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// inspect is one field of `crictl inspect` (a go template over it).
func (c *criEnv) inspect(ctx context.Context, id, tmpl string) string {
	out, _ := c.cc.run(ctx, "inspect", "-o", "go-template", "--template", tmpl, id)
	return strings.TrimSpace(out)
}

// waitExited waits until the container has exited and returns its exit
// code and reason.
func (c *criEnv) waitExited(t *testing.T, ctx context.Context, id string, timeout time.Duration) (string, string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if c.inspect(ctx, id, "{{.status.state}}") == "CONTAINER_EXITED" {
			return c.inspect(ctx, id, "{{.status.exitCode}}"), c.inspect(ctx, id, "{{.status.reason}}")
		}
		if time.Now().After(deadline) {
			logs, _ := c.cc.run(ctx, "logs", id)
			t.Fatalf("container %s has not exited after %v; log:\n%s", id, timeout, logs)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestCRIEnclaveKilled kills an enclave from outside while its Pod runs —
// QEMU, and separately the launcher — as the OOM killer or an operator
// would: only that container ends (exit 137), the shim keeps serving the
// Pod's sandbox and its other container, and stopping and removing the
// containers and the Pod succeed and leave no shim, launcher, QEMU, mount
// or cgroup behind. The QEMU case removes the containers first (kubelet's
// order); the launcher case stops and removes the Pod directly, which
// stops and removes its containers (critest's order).
func TestCRIEnclaveKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := newCRIEnv(t, ctx)
	for _, victim := range []string{"qemu", "launcher"} {
		t.Run(victim, func(t *testing.T) {
			pod := c.runPod(t, ctx, "killed-"+victim, nil)
			id := c.createContainer(t, ctx, pod, "app", []string{"sh", "-c", "echo up; exec sleep 600"}, nil)
			other := c.createContainer(t, ctx, pod, "other", []string{"sh", "-c", "while true; do echo alive; sleep 1; done"}, nil)
			for _, ctr := range []string{id, other} {
				if _, err := c.cc.run(ctx, "start", ctr); err != nil {
					t.Fatal(err)
				}
			}
			launcherPid := processOf(30*time.Second, "nitropod-launcher", id)
			if launcherPid == 0 {
				t.Fatalf("no launcher for %s", id)
			}
			pid := launcherPid
			if victim == "qemu" {
				if pid = childOf(30*time.Second, launcherPid, "qemu-system"); pid == 0 {
					t.Fatalf("no QEMU under launcher %d", launcherPid)
				}
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			code, reason := c.waitExited(t, ctx, id, time.Minute)
			t.Logf("after kill -9 of %s (pid %d): exit code %s, reason %q", victim, pid, code, reason)
			if code == "0" {
				t.Errorf("exit code of a killed enclave is 0")
			}
			// The shim still serves the Pod: its sandbox is ready, the other
			// enclave container runs and its output still arrives.
			if st, err := c.cc.run(ctx, "inspectp", "-o", "go-template", "--template", "{{.status.state}}", pod.id); err != nil || st != "SANDBOX_READY" {
				t.Errorf("sandbox after the enclave died: state %q, err %v", st, err)
			}
			if st := c.inspect(ctx, other, "{{.status.state}}"); st != "CONTAINER_RUNNING" {
				t.Errorf("the Pod's other container after the enclave died: %q", st)
			}
			before, _ := c.cc.run(ctx, "logs", other)
			time.Sleep(3 * time.Second)
			if after, _ := c.cc.run(ctx, "logs", other); strings.Count(after, "alive") <= strings.Count(before, "alive") {
				t.Errorf("the other container's output stopped: %d lines, then %d", strings.Count(before, "alive"), strings.Count(after, "alive"))
			}
			if n := c.ShimProcesses(); n != 1 {
				t.Errorf("%d shim processes after the enclave died, want 1", n)
			}
			steps := [][]string{{"stop", "--timeout", "5", id}, {"rm", id}, {"stop", "--timeout", "5", other}, {"rm", other}, {"stopp", pod.id}, {"rmp", pod.id}}
			if victim == "launcher" {
				steps = [][]string{{"stopp", pod.id}, {"rmp", pod.id}}
			}
			for _, args := range steps {
				if out, err := c.cc.run(ctx, args...); err != nil {
					t.Errorf("crictl %s: %v (%s)", strings.Join(args, " "), err, out)
				}
			}
			if out, _ := c.cc.run(ctx, "pods", "-q"); out != "" {
				t.Errorf("Pods left: %q", out)
			}
			if out, _ := c.cc.run(ctx, "ps", "-a", "-q"); out != "" {
				t.Errorf("containers left: %q", out)
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				left, shims := c.Leftovers(), c.ShimProcesses()
				if len(left) == 0 && shims == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("after stop/remove: %d shim processes; left: %s", shims, strings.Join(left, "\n"))
					break
				}
				time.Sleep(300 * time.Millisecond)
			}
			for _, ctr := range []string{id, other} {
				for _, cg := range []string{"/nitropod/" + criNS + "/" + ctr, "/" + criNS + "/" + ctr} {
					if d := shimtest.NodeCgroupfs().Dirs(cg); len(d) != 0 {
						t.Errorf("cgroup %s left behind: %v", cg, d)
					}
				}
			}
		})
	}
}
