package shim

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/internal/shimtest"
)

// startIn starts `sleep 60` born in the cgroup v2 directory dir (or in the
// test's own cgroup when dir is ""), and reaps it at cleanup.
func startIn(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if dir != "" {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// v2CgroupOf is pid's cgroup in the v2 hierarchy ("0::/path" of
// /proc/pid/cgroup).
func v2CgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p
		}
	}
	return ""
}

// TestCgroupV2Real runs the container and enclave cgroup code paths on a
// real cgroup v2 hierarchy (shimtest.V2Hierarchy; on this cgroup v1 CI
// machine it has no controllers, so no limits are set here, see
// TestCgroupV2LimitsFakeTree): the launcher is moved into its cgroup, QEMU's
// stand-in is born in the enclave cgroup, the pids are listed, both cgroups
// are killed (cgroup.kill) and removed.
func TestCgroupV2Real(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root := shimtest.V2Hierarchy(t)
	h := cgroupHost{Root: root, V2: true, NoSystemd: true}
	base := fmt.Sprintf("/nitropod-test-%d", os.Getpid())
	t.Cleanup(func() {
		_ = h.removeAll(base+"/nitropod/ns1/c1", base+"/k8s/c1")
		os.Remove(root + base + "/nitropod/ns1")
		os.Remove(root + base + "/nitropod")
		os.Remove(root + base + "/k8s")
		os.Remove(root + base)
	})
	cg, encl := base+"/k8s/c1", base+"/nitropod/ns1/c1"
	launcher := startIn(t, "")
	// An empty CPU section (ctr's default spec has one) sets nothing and
	// must not need the cpu controller, which this hierarchy may lack.
	if err := h.create(cg, &specs.LinuxResources{CPU: &specs.LinuxCPU{}, Memory: &specs.LinuxMemory{}}, launcher.Process.Pid); err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := v2CgroupOf(t, launcher.Process.Pid); got != cg {
		t.Errorf("launcher in %q, want %q", got, cg)
	}
	got, err := h.createEnclave(encl)
	if err != nil || got != encl {
		t.Fatalf("createEnclave = %q, %v; want %q", got, err, encl)
	}
	qemu := startIn(t, filepath.Join(root, encl))
	if got := v2CgroupOf(t, qemu.Process.Pid); got != encl {
		t.Errorf("enclave process in %q, want %q", got, encl)
	}
	fs := shimtest.Cgroupfs{Root: root, V2: true}
	for _, c := range []struct {
		path string
		pid  int
	}{{cg, launcher.Process.Pid}, {encl, qemu.Process.Pid}} {
		pids, err := h.pids(c.path)
		if err != nil || !slices.Contains(pids, c.pid) {
			t.Errorf("pids(%s) = %v, %v; want %d in it", c.path, pids, err, c.pid)
		}
		if !fs.HasProc(c.path, c.pid) {
			t.Errorf("shimtest.Cgroupfs.HasProc(%s, %d) = false", c.path, c.pid)
		}
	}
	if n := len(fs.Glob(base + "/nitropod/*/*")); n != 1 {
		t.Errorf("Glob of the enclave cgroups: %d, want 1", n)
	}
	exited := make(chan error, 2)
	go func() { exited <- launcher.Wait() }()
	go func() { exited <- qemu.Wait() }()
	if err := h.removeAll(cg, encl); err != nil {
		t.Fatalf("removeAll: %v", err)
	}
	for range 2 {
		select {
		case err := <-exited:
			var ws *exec.ExitError
			if !errors.As(err, &ws) || ws.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Errorf("process ended with %v, want SIGKILL", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("processes still running after removeAll")
		}
	}
	for _, p := range []string{cg, encl} {
		if d := fs.Dirs(p); len(d) != 0 {
			t.Errorf("cgroup %s left: %v", p, d)
		}
	}
	// Removing again (a second delete) is not an error.
	if err := h.removeAll(cg, encl); err != nil {
		t.Errorf("second removeAll: %v", err)
	}
}

// fakeCgroup2Tree writes a FAKE cgroup v2 tree (plain files in a temporary
// directory, as the kernel lays them out) with every controller, for the
// limit files the cgroup library writes: the CI machine's real v2 hierarchy
// has no controllers (they are bound to v1). Parents hold
// cgroup.subtree_control as in the kernel's tree.
func fakeCgroup2Tree(t *testing.T, parents ...string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "fake-cgroup2")
	for _, d := range append([]string{""}, parents...) {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"cgroup.subtree_control", "cgroup.procs"} {
			if err := os.WriteFile(filepath.Join(root, d, f), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(root, d, "cgroup.controllers"), []byte("cpuset cpu io memory hugetlb pids rdma misc\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestCgroupV2LimitsFakeTree sets and updates the launcher limits on a
// FAKE cgroup v2 tree and reads them back through shimtest.Cgroupfs: the
// file names and formats of v2 (memory.max, cpu.max, cpu.weight, pids.max)
// and the controllers enabled in the parents.
func TestCgroupV2LimitsFakeTree(t *testing.T) {
	root := fakeCgroup2Tree(t, "kubepods", "kubepods/pod1")
	h := cgroupHost{Root: root, V2: true, NoSystemd: true}
	limit, quota, period, shares := int64(128<<20), int64(150000), uint64(100000), uint64(1024)
	res := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &limit},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period, Shares: &shares},
		Pids:   &specs.LinuxPids{Limit: 64},
		// Not the launcher's: dropped (launcherResources).
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	const cg = "/kubepods/pod1/c1"
	if err := h.create(cg, res, 4242); err != nil {
		t.Fatalf("create: %v", err)
	}
	read := func(f string) string {
		b, err := os.ReadFile(filepath.Join(root, cg, f))
		if err != nil {
			t.Error(err)
		}
		return strings.TrimSpace(string(b))
	}
	for f, want := range map[string]string{"memory.max": "134217728", "cpu.max": "150000 100000", "cpu.weight": "39", "pids.max": "64", "cgroup.procs": "4242"} {
		if got := read(f); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	b, _ := os.ReadFile(filepath.Join(root, "kubepods/pod1/cgroup.subtree_control"))
	for _, c := range []string{"+memory", "+cpu", "+pids"} {
		if !strings.Contains(string(b), c) {
			t.Errorf("parent's cgroup.subtree_control %q lacks %s", b, c)
		}
	}
	fs := shimtest.Cgroupfs{Root: root, V2: true}
	if m, err := fs.MemoryLimit(cg); err != nil || m != 128<<20 {
		t.Errorf("MemoryLimit = %d, %v", m, err)
	}
	limit, quota = 256<<20, 50000
	if err := h.update(cg, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}}); err != nil {
		t.Fatalf("update: %v", err)
	}
	if q, p, err := fs.CPUQuota(cg); err != nil || q != 50000 || p != 100000 {
		t.Errorf("CPUQuota after update = %d %d, %v; want 50000 100000", q, p, err)
	}
	if m, err := fs.MemoryLimit(cg); err != nil || m != 256<<20 {
		t.Errorf("MemoryLimit after update = %d, %v; want %d", m, err, 256<<20)
	}
	// The systemd form needs systemd: refused with its name, not written
	// to some other path.
	if err := h.create("kubepods.slice:cri-containerd:c2", res, 4242); err == nil || !strings.Contains(err.Error(), "systemd") {
		t.Errorf("systemd form without systemd: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "kubepods.slice")); err == nil {
		t.Error("systemd form without systemd created a cgroup")
	}
}

// TestEnclavesOnNodeV2EnclaveCgroups: on cgroup v2 the enclave cgroups
// (/nitropod/<namespace>/<id> in the unified hierarchy) count too, so an
// enclave whose shim crashed is still counted, on a FAKE v2 tree and on v1
// (where the v2 count is 0).
func TestEnclavesOnNodeV2EnclaveCgroups(t *testing.T) {
	root := fakeCgroupfs(t, 2)
	for _, d := range []string{"nitropod/k8s.io/a", "nitropod/default/orphan"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "nitropod/k8s.io/not-a-cgroup"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	n := nodeEnclaves{CgroupRoot: root, TaskRoot: "", ProcRoot: "/proc", Launcher: LauncherBinary}
	if got := n.enclavesOnNode(); got != 2 {
		t.Errorf("enclavesOnNode on v2 with two enclave cgroups = %d, want 2", got)
	}
	if got := enclaveCgroupsV2(fakeCgroupfs(t, 1, "k8s.io/a")); got != 0 {
		t.Errorf("enclaveCgroupsV2 of a v1 tree = %d, want 0", got)
	}
}

// TestKillCgroupSkipsInvisibleAndSelf: cgroup.procs lists a process
// outside the reader's PID namespace as 0, and kill(0) would hit the shim's
// own process group; neither that nor the shim itself is ever signalled
// (on a FAKE v2 tree whose cgroup.procs holds exactly those). The test
// process is the stand-in for the shim: it survives.
func TestKillCgroupSkipsInvisibleAndSelf(t *testing.T) {
	root := fakeCgroup2Tree(t, "k8s")
	h := cgroupHost{Root: root, V2: true, NoSystemd: true}
	dir := filepath.Join(root, "k8s", "c1")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	procs := fmt.Sprintf("0\n1\n%d\n", os.Getpid())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(procs), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.kill("/k8s/c1"); err != nil {
		t.Errorf("kill: %v", err)
	}
}

// TestSignalCgroupV2Real: signal sends SIGKILL to a cgroup's processes on
// a real cgroup v2 hierarchy and returns without waiting for them (Kill),
// unlike kill, which waits until the cgroup is empty.
func TestSignalCgroupV2Real(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root := shimtest.V2Hierarchy(t)
	h := cgroupHost{Root: root, V2: true, NoSystemd: true}
	cg := fmt.Sprintf("/nitropod-signal-test-%d", os.Getpid())
	t.Cleanup(func() { _ = h.removeAll(cg) })
	if _, err := h.createEnclave(cg); err != nil {
		t.Fatal(err)
	}
	p := startIn(t, filepath.Join(root, cg))
	exited := make(chan error, 1)
	go func() { exited <- p.Wait() }()
	t0 := time.Now()
	if err := h.signal(cg); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 40*time.Millisecond {
		t.Errorf("signal took %v; it must not wait for the processes", d)
	}
	select {
	case err := <-exited:
		var ws *exec.ExitError
		if !errors.As(err, &ws) || ws.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("process ended with %v, want SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("process still running after signal")
	}
	if err := h.signal(cg + "-missing"); err != nil {
		t.Errorf("signal of a missing cgroup: %v", err)
	}
}
