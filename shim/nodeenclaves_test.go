package shim

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// fakeCgroupfs writes a FAKE cgroupfs tree (the test cannot mount cgroup
// hierarchies of its own): v1 has per-controller hierarchies and the enclave
// cgroups /nitropod/<namespace>/<id> under memory/ and cpu/; v2 is the
// unified hierarchy (enclave cgroups there: TestEnclavesOnNodeV2EnclaveCgroups).
func fakeCgroupfs(t *testing.T, version int, enclaves ...string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "fake-cgroupfs-v"+strconv.Itoa(version))
	var dirs, files []string
	switch version {
	case 1:
		dirs = []string{"cpu/kubepods", "memory/kubepods", "pids/kubepods"}
		for _, e := range enclaves {
			dirs = append(dirs, "memory/nitropod/"+e, "cpu/nitropod/"+e)
			files = append(files, "memory/nitropod/"+e+"/cgroup.procs")
		}
	case 2:
		dirs = []string{"kubepods/burstable/pod1/c1", "system.slice"}
		files = []string{"cgroup.controllers", "kubepods/burstable/pod1/c1/cgroup.procs"}
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// startNamed runs a real sleep process whose executable is called name (its
// comm in /proc), and returns its pid; it is killed when the test ends.
func startNamed(t *testing.T, name string) int {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary:", err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

// exitedPid is the pid of a process that has exited and been reaped.
func exitedPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("cannot run true:", err)
	}
	return cmd.Process.Pid
}

// taskTree writes containerd task bundles (<root>/<namespace>/<id>) with
// the given state files ("" for none: a runc container such as pause).
func taskTree(t *testing.T, bundles map[string]string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "io.containerd.runtime.v2.task")
	for b, state := range bundles {
		dir := filepath.Join(root, b)
		if err := os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755); err != nil {
			t.Fatal(err)
		}
		if state == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, stateFile), []byte(state), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func stateJSON(t *testing.T, pid int) string {
	t.Helper()
	b, err := json.Marshal(bundleState{LauncherPid: pid, Backend: BackendQEMU})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestEnclavesOnNodeCgroupV1AndV2 counts the same running enclaves under a
// cgroup v1 and a cgroup v2 layout: the count must not be 0 on v2 (the
// AL2023 and Bottlerocket default).
func TestEnclavesOnNodeCgroupV1AndV2(t *testing.T) {
	l1, l2 := startNamed(t, LauncherBinary), startNamed(t, LauncherBinary)
	other := startNamed(t, "sleep")
	bundles := map[string]string{
		"k8s.io/enclave-a":   stateJSON(t, l1),
		"k8s.io/enclave-b":   stateJSON(t, l2),
		"default/exited":     stateJSON(t, exitedPid(t)), // launcher gone, bundle not yet deleted
		"k8s.io/recycled":    stateJSON(t, other),        // pid now belongs to something else
		"k8s.io/pause":       "",                         // runc container: no state file
		"k8s.io/corrupt":     "{not json",
		"k8s.io/no-launcher": `{"backend":"qemu"}`,
	}
	tasks := taskTree(t, bundles)
	for _, tc := range []struct {
		name   string
		cgroup string
		want   int
	}{
		{"cgroup v2", fakeCgroupfs(t, 2), 2},
		{"cgroup v1", fakeCgroupfs(t, 1, "k8s.io/enclave-a", "k8s.io/enclave-b"), 2},
		// A shim that crashed leaves its enclave (and enclave cgroup) running
		// without a live launcher record; v1 still counts it.
		{"cgroup v1, orphaned enclave cgroup", fakeCgroupfs(t, 1, "k8s.io/enclave-a", "k8s.io/enclave-b", "default/orphan"), 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := nodeEnclaves{CgroupRoot: tc.cgroup, TaskRoot: tasks, ProcRoot: "/proc", Launcher: LauncherBinary}
			if got := n.enclavesOnNode(); got != tc.want {
				t.Errorf("enclavesOnNode = %d, want %d (bundles %v)", got, tc.want, bundles)
			}
		})
	}
	// The production view derives the task root from a bundle's path.
	n := nodeEnclavesFor(filepath.Join(tasks, "k8s.io", "new-container"), "/opt/nitropod/bin/"+LauncherBinary)
	if n.TaskRoot != tasks || n.Launcher != LauncherBinary {
		t.Errorf("nodeEnclavesFor = %+v, want task root %s and launcher %s", n, tasks, LauncherBinary)
	}
	n.CgroupRoot = fakeCgroupfs(t, 2)
	if got := n.enclavesOnNode(); got != 2 {
		t.Errorf("nodeEnclavesFor(...).enclavesOnNode = %d, want 2", got)
	}
	// A launcher under another file name is matched by that name.
	n.Launcher = "other-launcher"
	if got := n.enclavesOnNode(); got != 0 {
		t.Errorf("with launcher other-launcher: enclavesOnNode = %d, want 0", got)
	}
}

// TestEnclaveCgroupsV1 is the cgroup v1 count on its own: one enclave
// cgroup per container, in the memory hierarchy only.
func TestEnclaveCgroupsV1(t *testing.T) {
	root := fakeCgroupfs(t, 1, "k8s.io/a", "k8s.io/b", "default/c")
	if n := enclaveCgroupsV1(root); n != 3 {
		t.Errorf("enclaveCgroupsV1 = %d, want 3", n)
	}
	if n := enclaveCgroupsV1(filepath.Join(root, "none")); n != 0 {
		t.Errorf("enclaveCgroupsV1 of an empty root = %d, want 0", n)
	}
	if n := enclaveCgroupsV1(fakeCgroupfs(t, 2)); n != 0 {
		t.Errorf("enclaveCgroupsV1 of a v2 tree = %d, want 0", n)
	}
}

// TestEnclavesOnNodeOversizedState: a state file is read only up to a
// bound and an oversized one is not counted.
func TestEnclavesOnNodeOversizedState(t *testing.T) {
	pid := startNamed(t, LauncherBinary)
	big := stateJSON(t, pid)
	big = big[:len(big)-1] + `,"pad":"` + string(make([]byte, maxStateFileBytes)) + `"}`
	tasks := taskTree(t, map[string]string{"k8s.io/big": big, "k8s.io/ok": stateJSON(t, pid)})
	n := nodeEnclaves{CgroupRoot: fakeCgroupfs(t, 2), TaskRoot: tasks, ProcRoot: "/proc"}
	if got := n.enclavesOnNode(); got != 1 {
		t.Errorf("enclavesOnNode = %d, want 1 (the oversized state file is skipped)", got)
	}
}
