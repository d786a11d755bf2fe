package shim_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/shimtest"
)

// taskPid is the task's pid from `ctr task ls` (the launcher).
func (e *env) taskPid(t testing.TB, ctx context.Context, id string) (int, string) {
	t.Helper()
	out, err := e.Ctrd.Ctr(ctx, ns, "task", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == id {
			pid, _ := strconv.Atoi(f[1])
			return pid, f[2]
		}
	}
	return 0, ""
}

func (e *env) runDetached(t testing.TB, ctx context.Context, extra []string, id string, args ...string) {
	t.Helper()
	full := append([]string{"run", "-d", "--runtime", nitropod.RuntimeType}, ctrCPUFlags()...)
	full = append(full, extra...)
	full = append(full, busyboxRef, id)
	full = append(full, args...)
	if out, err := e.Ctrd.CtrCmd(ctx, ns, full...).CombinedOutput(); err != nil {
		t.Fatalf("ctr run -d %s: %v: %s", id, err, out)
	}
}

func (e *env) waitStatus(t testing.TB, ctx context.Context, id, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		_, st := e.taskPid(t, ctx, id)
		if st == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s status %q, want %q after %v", id, st, want, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitAppStarted waits until the launcher reports the app running in the
// enclave.
func (e *env) waitAppStarted(t testing.TB, id string, timeout time.Duration) {
	t.Helper()
	p := filepath.Join(e.Ctrd.State, "io.containerd.runtime.v2.task", ns, id, "nitropod-launcher.log")
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "app started in enclave") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: app not started in the enclave within %v; launcher log:\n%s", id, timeout, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *env) remove(ctx context.Context, id string) {
	_, _ = e.Ctrd.Ctr(ctx, ns, "task", "rm", "-f", id)
	_, _ = e.Ctrd.Ctr(ctx, ns, "container", "rm", id)
}

func ppid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	p, _ := strconv.Atoi(f[1])
	return p
}

// TestConcurrentContainersBuildOnce starts three containers of one new
// image at once: the EIF is built once, the other two are cache hits.
func TestConcurrentContainersBuildOnce(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busybox2Ref, busyboxImage(t, "concurrent"))
	ids := []string{"conc1", "conc2", "conc3"}
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	outs := make([][]byte, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = e.run(ctx, nil, busybox2Ref, id, "cat", "/etc/variant").CombinedOutput()
		}()
	}
	wg.Wait()
	builds, hits := 0, 0
	for i, id := range ids {
		if errs[i] != nil || !strings.Contains(string(outs[i]), "concurrent") {
			t.Errorf("%s: %v: %s", id, errs[i], outs[i])
		}
		hit, build, _ := e.createInfo(t, id)
		if build {
			builds++
		}
		if hit {
			hits++
		}
	}
	if builds != 1 || hits != 2 {
		t.Errorf("three concurrent containers of one image: %d builds, %d cache hits; want 1 and 2", builds, hits)
	}
	ents, _ := filepath.Glob(filepath.Join(e.CacheDir, "*.eif"))
	if len(ents) != 1 {
		t.Errorf("cache holds %d EIFs, want 1: %v", len(ents), ents)
	}
}

// TestShimKilled kills the shim with SIGKILL while its container runs:
// containerd's cleanup (the shim's `delete`) must leave no launcher, QEMU,
// mount or cgroup behind.
func TestShimKilled(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	e.runDetached(t, ctx, nil, "crash1", "sh", "-c", "while true; do sleep 1; done")
	defer e.remove(ctx, "crash1")
	e.waitStatus(t, ctx, "crash1", "RUNNING", time.Minute)
	pid, _ := e.taskPid(t, ctx, "crash1")
	e.waitAppStarted(t, "crash1", 3*time.Minute)
	if n := len(e.Leftovers()); n < 2 {
		t.Fatalf("expected a launcher and QEMU running, found %d: %v", n, e.Leftovers())
	}
	t.Logf("running: %v", e.Leftovers())
	shimPid := ppid(pid)
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", shimPid))
	if !strings.Contains(string(b), nitropod.ShimBinary) {
		t.Fatalf("parent of launcher %d is %d (%q), not the shim", pid, shimPid, b)
	}
	if err := syscall.Kill(shimPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		left := e.Leftovers()
		_, st := e.taskPid(t, ctx, "crash1")
		if len(left) == 0 && st != "RUNNING" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after kill -9 of the shim: task status %q, left: %v", st, left)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The dead shim's cleanup removes the cgroups a moment after the
	// processes are gone.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var left []string
		for _, p := range []string{"/" + ns + "/crash1", "/nitropod/" + ns + "/crash1"} {
			left = append(left, shimtest.NodeCgroupfs().Dirs(p)...)
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("cgroups left behind: %v", left)
			break
		}
	}
}

// TestContainerdRestart restarts containerd while an enclave container
// runs: the container keeps running and containerd reconnects to its shim.
func TestContainerdRestart(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	e.runDetached(t, ctx, nil, "restart1", "sh", "-c", "while true; do sleep 1; done")
	defer e.remove(ctx, "restart1")
	e.waitStatus(t, ctx, "restart1", "RUNNING", time.Minute)
	pid, _ := e.taskPid(t, ctx, "restart1")
	e.waitAppStarted(t, "restart1", 3*time.Minute)
	e.Ctrd.Restart()
	e.waitStatus(t, ctx, "restart1", "RUNNING", 30*time.Second)
	if pid2, _ := e.taskPid(t, ctx, "restart1"); pid2 != pid {
		t.Errorf("task pid after restart %d, want %d", pid2, pid)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("launcher %d gone after containerd restart: %v", pid, err)
	}
	if n := len(e.Leftovers()); n != 2 {
		t.Errorf("after containerd restart want the launcher and QEMU running, found %v", e.Leftovers())
	}
	lb, _ := os.ReadFile(filepath.Join(e.Ctrd.State, "io.containerd.runtime.v2.task", ns, "restart1", "nitropod-launcher.log"))
	if strings.Contains(string(lb), "app exited") {
		t.Errorf("the app exited across the containerd restart:\n%s", lb)
	}
	// containerd talks to the shim again: kill and delete work.
	if out, err := e.Ctrd.Ctr(ctx, ns, "task", "kill", "-s", "SIGKILL", "restart1"); err != nil {
		t.Fatalf("kill after restart: %v: %s", err, out)
	}
	e.waitStatus(t, ctx, "restart1", "STOPPED", time.Minute)
	if out, err := e.Ctrd.Ctr(ctx, ns, "task", "rm", "restart1"); err != nil {
		t.Fatalf("task rm after restart: %v: %s", err, out)
	}
}

// TestLauncherLimits runs a container with cpu and memory limits: the
// launcher's cgroup carries them, while QEMU (the emulated enclave, standing
// in for Nitro's reserved CPUs and memory) runs outside them — a 128 MiB
// launcher limit does not stop a 256 MiB enclave.
func TestLauncherLimits(t *testing.T) {
	testLauncherLimits(t, "limits1", "", "/"+ns+"/limits1")
}

// TestLauncherLimitsSystemd is TestLauncherLimits with a cgroupsPath in the
// systemd driver's form: the launcher's cgroup is a transient systemd scope
// in the slice. It needs a machine booted with systemd (on the CI machine:
// inside hack/systemd-sandbox.sh).
func TestLauncherLimitsSystemd(t *testing.T) {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Skip("not booted with systemd (run it inside hack/systemd-sandbox.sh)")
	}
	testLauncherLimits(t, "limits2", "nitropodtest.slice:nitropod:limits2", "/nitropodtest.slice/nitropod-limits2.scope")
	if out, _ := exec.Command("systemctl", "is-active", "nitropod-limits2.scope").Output(); strings.TrimSpace(string(out)) == "active" {
		t.Error("scope nitropod-limits2.scope still active after delete")
	}
}

// testLauncherLimits runs container id with the cgroupsPath cgroupFlag
// ("" for ctr's default, /<namespace>/<id>), whose directory below the
// cgroup root is cg.
func testLauncherLimits(t *testing.T, id, cgroupFlag, cg string) {
	if cgfs := shimtest.NodeCgroupfs(); !cgfs.HasController("memory") || !cgfs.HasController("cpu") {
		t.Skip("no memory and cpu controllers (a cgroup v2 hierarchy whose controllers are bound to v1)")
	}
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	flags := []string{"--memory-limit", "134217728", "--cpus", "1.5"}
	if cgroupFlag != "" {
		flags = append(flags, "--cgroup", cgroupFlag)
	}
	e.runDetached(t, ctx, flags, id, "sh", "-c", "while true; do sleep 1; done")
	defer e.remove(ctx, id)
	e.waitStatus(t, ctx, id, "RUNNING", time.Minute)
	pid, _ := e.taskPid(t, ctx, id)
	// The cgroups are read alike on cgroup v1 and v2 (shimtest.Cgroupfs).
	cgfs := shimtest.NodeCgroupfs()
	encl := "/nitropod/" + ns + "/" + id
	if m, err := cgfs.MemoryLimit(cg); err != nil || m != 134217728 {
		t.Errorf("memory limit of %s = %d, %v; want 134217728", cg, m, err)
	}
	if q, p, err := cgfs.CPUQuota(cg); err != nil || q != 150000 || p != 100000 {
		t.Errorf("cpu quota of %s = %d/%d, %v; want 150000/100000", cg, q, p, err)
	}
	if !cgfs.HasProc(cg, pid) {
		t.Errorf("launcher %d not in cgroup %s (%v)", pid, cg, cgfs.Dirs(cg))
	}
	e.waitAppStarted(t, id, 3*time.Minute)
	qemu := 0
	procs, err := cgfs.Procs(encl)
	if err != nil {
		t.Fatalf("enclave cgroup %s: %v", encl, err)
	}
	for _, p := range procs {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); strings.Contains(string(b), "qemu-system") {
			qemu = p
		}
	}
	if qemu == 0 {
		t.Fatalf("no QEMU in the enclave cgroup %s (%v)", encl, procs)
	}
	if launcherProcs, _ := cgfs.Procs(cg); slices.Contains(launcherProcs, qemu) {
		t.Errorf("QEMU %d is in the launcher's cgroup %s", qemu, cg)
	}
	_, _ = e.Ctrd.Ctr(ctx, ns, "task", "kill", "-s", "SIGKILL", id)
	e.waitStatus(t, ctx, id, "STOPPED", time.Minute)
	e.remove(ctx, id)
	for _, p := range []string{cg, encl} {
		if d := cgfs.Dirs(p); len(d) != 0 {
			t.Errorf("cgroup %s left after delete: %v", p, d)
		}
	}
}
