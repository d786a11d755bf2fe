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
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/ctrtest"
	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/images"
)

// TestCRIPodSystemdCgroup runs a Pod through containerd's CRI the way
// kubelet does with cgroupDriver: systemd: the Pod's cgroup parent is a
// systemd slice, so CRI gives the sandbox and the app container cgroupsPaths
// in the systemd form (slice:cri-containerd:id). The sandbox (runc, with
// runc's systemd driver) and the launcher each get a transient scope in the
// slice, QEMU runs in the enclave cgroup, the launcher limits are updated
// through the scope, and stopping the Pod removes the scopes and cgroups.
// It needs a machine booted with systemd: on the CI machine run it inside
// hack/systemd-sandbox.sh.
func TestCRIPodSystemdCgroup(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Skip("not booted with systemd (run it inside hack/systemd-sandbox.sh)")
	}
	// kubelet's systemd driver names a Pod's slice after its QoS class and
	// uid, below kubepods.slice; a slice of the test's own stands in.
	testCRIPodCgroups(t, "nitropodtest-pod1.slice", "/nitropodtest.slice/nitropodtest-pod1.slice", true)
}

// TestCRIPodCgroupfsParent is the same Pod with kubelet's cgroupfs driver:
// the cgroup parent is a path, the sandbox's and the container's cgroups
// are <parent>/<id>.
func TestCRIPodCgroupfsParent(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	testCRIPodCgroups(t, "/nitropodtest/pod1", "/nitropodtest/pod1", false)
}

// testCRIPodCgroups runs the Pod with cgroup parent parent, whose cgroup
// directory is parentDir; systemd says whether CRI makes systemd scopes.
func testCRIPodCgroups(t *testing.T, parent, parentDir string, systemd bool) {
	if cgfs := shimtest.NodeCgroupfs(); !cgfs.HasController("memory") || !cgfs.HasController("cpu") {
		// CRI gives every container cpu shares, which runc (the sandbox)
		// cannot set without the cpu controller.
		t.Skip("no memory and cpu controllers (a cgroup v2 hierarchy whose controllers are bound to v1)")
	}
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
    {"type": "bridge", "bridge": "nitrotest0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]]}}
  ]
}`, filepath.Join(dir, "ipam"), podSubnet)), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnvOpts(t, ctrtest.Options{NetNS: true, CRI: &ctrtest.CRIOptions{
		SandboxImage:   pauseRef,
		Runtimes:       map[string]string{nitropod.RuntimeClassName: nitropod.RuntimeType},
		PodAnnotations: []string{"nitro.k8s.anjuna.io/*", "nitropod.io/*"},
		CNIConfDir:     cniConf,
	}})
	cc.sock, cc.netns = e.Ctrd.Socket, e.Ctrd.NetNSPath
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	pause, err := images.Pause(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e.importImage(t, ctx, criNS, pauseRef, pause)
	e.importImage(t, ctx, criNS, busyboxRef, busyboxImage(t, ""))

	podCfg := writeJSON(t, filepath.Join(dir, "pod.json"), map[string]any{
		"metadata":      map[string]any{"name": "nitro-sd", "namespace": "default", "uid": "nitro-sd-uid", "attempt": 0},
		"hostname":      "nitro-sd",
		"log_directory": filepath.Join(dir, "logs"),
		"annotations": map[string]string{
			nitropod.EnclavesAnnotation: `{"app":{"cpu":2,"memoryMiB":256}}`,
		},
		"linux": map[string]any{"cgroup_parent": parent},
	})
	cgfs := shimtest.NodeCgroupfs()
	linux := map[string]any{"resources": map[string]any{"cpu_period": 100000, "cpu_quota": 150000, "memory_limit_in_bytes": 134217728}}
	ctrCfg := writeJSON(t, filepath.Join(dir, "ctr.json"), map[string]any{
		"metadata": map[string]any{"name": "app"},
		"image":    map[string]any{"image": busyboxRef},
		"command":  []string{"sh", "-c", "echo hello-from-systemd-pod; exec sleep 600"},
		"log_path": "app.log",
		"linux":    linux,
	})
	if !systemd {
		// The Pod's parent cgroups are kubelet's to remove; here the test
		// made them (through CRI), so it removes them, deepest first.
		t.Cleanup(func() {
			for p := parentDir; p != "/" && p != "."; p = filepath.Dir(p) {
				for _, pat := range []string{"/sys/fs/cgroup/*" + p, "/sys/fs/cgroup" + p} {
					dirs, _ := filepath.Glob(pat)
					for _, d := range dirs {
						_ = os.Remove(d)
					}
				}
			}
		})
	}
	pod, err := cc.run(ctx, "runp", "--runtime", nitropod.RuntimeClassName, podCfg)
	if err != nil {
		t.Fatal(err)
	}
	removed := false
	t.Cleanup(func() {
		if removed {
			return
		}
		c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, _ = cc.run(c, "stopp", pod)
		_, _ = cc.run(c, "rmp", "-f", pod)
	})
	// CRI's names: cri-containerd-<id>.scope in the slice (systemd), or
	// <parent>/<id> (cgroupfs).
	unit := func(id string) string { return "cri-containerd-" + id + ".scope" }
	dirOf := func(id string) string { return parentDir + "/" + id }
	if systemd {
		dirOf = func(id string) string { return parentDir + "/" + unit(id) }
		if !unitActive(unit(pod)) {
			t.Errorf("the sandbox's scope %s is not active", unit(pod))
		}
	}
	if d := cgfs.Dirs(dirOf(pod)); len(d) == 0 {
		t.Errorf("no cgroup %s for the sandbox", dirOf(pod))
	}
	ctrID, err := cc.run(ctx, "create", pod, ctrCfg, podCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.run(ctx, "start", ctrID); err != nil {
		t.Fatal(err)
	}
	cg := dirOf(ctrID)
	encl := "/nitropod/" + criNS + "/" + ctrID
	if systemd && !unitActive(unit(ctrID)) {
		t.Errorf("the launcher's scope %s is not active", unit(ctrID))
	}
	pidOut, err := cc.run(ctx, "inspect", "-o", "go-template", "--template", "{{.info.pid}}", ctrID)
	if err != nil {
		t.Fatal(err)
	}
	launcher, err := strconv.Atoi(strings.TrimSpace(pidOut))
	if err != nil {
		t.Fatalf("launcher pid %q: %v", pidOut, err)
	}
	if !cgfs.HasProc(cg, launcher) {
		t.Errorf("launcher %d not in its scope's cgroup %s (%v)", launcher, cg, cgfs.Dirs(cg))
	}
	if m, err := cgfs.MemoryLimit(cg); err != nil || m != 134217728 {
		t.Errorf("memory limit of %s = %d, %v; want 134217728", cg, m, err)
	}
	if q, p, err := cgfs.CPUQuota(cg); err != nil || q != 150000 || p != 100000 {
		t.Errorf("cpu quota of %s = %d/%d, %v; want 150000/100000", cg, q, p, err)
	}
	// The app runs: its output reaches the log.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		logs, _ := cc.run(ctx, "logs", ctrID)
		if strings.Contains(logs, "hello-from-systemd-pod") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no app output after 3 minutes; log: %q", logs)
		}
		time.Sleep(time.Second)
	}
	procs, err := cgfs.Procs(encl)
	if err != nil {
		t.Fatalf("enclave cgroup %s: %v", encl, err)
	}
	qemu := 0
	for _, p := range procs {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); strings.Contains(string(b), "qemu-system") {
			qemu = p
		}
	}
	if qemu == 0 {
		t.Errorf("no QEMU in the enclave cgroup %s (%v)", encl, procs)
	} else if lp, _ := cgfs.Procs(cg); slices.Contains(lp, qemu) {
		t.Errorf("QEMU %d is in the launcher's scope", qemu)
	}
	// UpdateContainerResources reaches the scope's cgroup; stats work.
	if _, err := cc.run(ctx, "update", "--cpu-quota", "50000", "--cpu-period", "100000", ctrID); err != nil {
		t.Errorf("crictl update: %v", err)
	} else if q, _, err := cgfs.CPUQuota(cg); err != nil || q != 50000 {
		t.Errorf("cpu quota after update = %d, %v; want 50000", q, err)
	}
	if systemd {
		// systemd keeps the new quota too (0.5 CPU: 500 ms per second).
		out, _ := exec.Command("systemctl", "show", "-p", "CPUQuotaPerSecUSec", "--value", unit(ctrID)).Output()
		if got := strings.TrimSpace(string(out)); got != "500ms" {
			t.Errorf("the scope's CPUQuotaPerSecUSec after update = %q, want 500ms", got)
		}
	}
	if out, err := cc.run(ctx, "stats", "-o", "json", ctrID); err != nil {
		t.Errorf("crictl stats: %v", err)
	} else if !strings.Contains(out, "memory") {
		t.Errorf("crictl stats output lacks memory: %s", out)
	}
	// Stopping and removing the Pod removes both scopes and every cgroup.
	if _, err := cc.run(ctx, "stopp", pod); err != nil {
		t.Fatal(err)
	}
	if _, err := cc.run(ctx, "rmp", "-f", pod); err != nil {
		t.Fatal(err)
	}
	removed = true
	deadline = time.Now().Add(15 * time.Second)
	for {
		var left []string
		for _, id := range []string{pod, ctrID} {
			if systemd && unitActive(unit(id)) {
				left = append(left, "unit "+unit(id))
			}
		}
		for _, p := range []string{cg, dirOf(pod), encl} {
			for _, d := range cgfs.Dirs(p) {
				left = append(left, "cgroup "+d)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left after the Pod was removed: %v", left)
		}
		time.Sleep(250 * time.Millisecond)
	}
	e.AssertNothingLeft(t)
}

// unitActive says whether systemd reports unit as active.
func unitActive(unit string) bool {
	out, _ := exec.Command("systemctl", "is-active", unit).Output()
	return strings.TrimSpace(string(out)) == "active"
}
