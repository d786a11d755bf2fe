package shimtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestCgroupfsV1 reads a cgroup made in this machine's v1 hierarchies
// (memory and cpu) with a process and limits in it.
func TestCgroupfsV1(t *testing.T) {
	c := NodeCgroupfs()
	if c.V2 || os.Geteuid() != 0 {
		t.Skip("needs root on a cgroup v1 host")
	}
	path := fmt.Sprintf("/nitropod-shimtest-%d", os.Getpid())
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	for _, h := range []string{"memory", "cpu"} {
		d := filepath.Join(c.Root, h, path)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Remove(d) })
	}
	write := func(h, f, v string) {
		if err := os.WriteFile(filepath.Join(c.Root, h, path, f), []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := c.MemoryLimit(path); err != nil || m != -1 {
		t.Errorf("MemoryLimit before a limit = %d, %v; want -1", m, err)
	}
	write("memory", "memory.limit_in_bytes", "134217728")
	write("cpu", "cpu.cfs_quota_us", "150000")
	if m, err := c.MemoryLimit(path); err != nil || m != 134217728 {
		t.Errorf("MemoryLimit = %d, %v", m, err)
	}
	if q, p, err := c.CPUQuota(path); err != nil || q != 150000 || p != 100000 {
		t.Errorf("CPUQuota = %d %d, %v", q, p, err)
	}
	if c.HasProc(path, cmd.Process.Pid) {
		t.Error("HasProc before the move")
	}
	write("memory", "cgroup.procs", strconv.Itoa(cmd.Process.Pid))
	if c.HasProc(path, cmd.Process.Pid) {
		t.Error("HasProc with the process in the memory hierarchy only: want false (not in cpu)")
	}
	write("cpu", "cgroup.procs", strconv.Itoa(cmd.Process.Pid))
	if !c.HasProc(path, cmd.Process.Pid) {
		t.Error("HasProc = false after the move")
	}
	if p, err := c.Procs(path); err != nil || !slices.Equal(p, []int{cmd.Process.Pid}) {
		t.Errorf("Procs = %v, %v", p, err)
	}
	if d := c.Dirs(path); len(d) != 2 {
		t.Errorf("Dirs = %v, want memory and cpu", d)
	}
	if g := c.Glob("/nitropod-shimtest-*"); !slices.Contains(g, path) {
		t.Errorf("Glob = %v, want %s in it", g, path)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if d := c.Dirs(path + "-none"); len(d) != 0 {
		t.Errorf("Dirs of a missing cgroup = %v", d)
	}
}

// TestCgroupfsV2 reads a cgroup of a real v2 hierarchy with a process in it.
func TestCgroupfsV2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	c := Cgroupfs{Root: V2Hierarchy(t), V2: true}
	path := fmt.Sprintf("/nitropod-shimtest-%d", os.Getpid())
	d := filepath.Join(c.Root, path)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(d) })
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	if !c.HasProc(path, cmd.Process.Pid) {
		t.Error("HasProc = false")
	}
	if p, err := c.Procs(path); err != nil || !slices.Equal(p, []int{cmd.Process.Pid}) {
		t.Errorf("Procs = %v, %v", p, err)
	}
	if g := c.Glob("/nitropod-shimtest-*"); !slices.Contains(g, path) {
		t.Errorf("Glob = %v", g)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// TestHasController: this machine's hierarchies, and a v2 hierarchy that
// lists no controllers where they are bound to v1.
func TestHasController(t *testing.T) {
	c := NodeCgroupfs()
	if !c.V2 && !c.HasController("memory") {
		t.Error("cgroup v1 host without a memory hierarchy")
	}
	if c.HasController("no-such-controller") {
		t.Error("HasController(no-such-controller) = true")
	}
	if os.Geteuid() != 0 {
		return
	}
	v2 := Cgroupfs{Root: V2Hierarchy(t), V2: true}
	b, _ := os.ReadFile(filepath.Join(v2.Root, "cgroup.controllers"))
	want := strings.Contains(" "+strings.TrimSpace(string(b))+" ", " memory ")
	if got := v2.HasController("memory"); got != want {
		t.Errorf("v2 HasController(memory) = %v with cgroup.controllers %q", got, b)
	}
}
