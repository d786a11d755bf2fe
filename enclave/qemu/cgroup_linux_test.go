package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitropod/nitropod/internal/shimtest"
)

// TestIntoCgroup starts a process born in a cgroup of a real cgroup v2
// hierarchy, as QEMU is started on a v2 node.
func TestIntoCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root := shimtest.V2Hierarchy(t)
	rel := fmt.Sprintf("/nitropod-qemu-test-%d", os.Getpid())
	dir := filepath.Join(root, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = sysProcAttr()
	release, err := intoCgroup(cmd, dir)
	if err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	release()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if !strings.Contains(string(b), "\n0::"+rel+"\n") && !strings.HasPrefix(string(b), "0::"+rel+"\n") {
		t.Errorf("child's cgroups:\n%s\nwant 0::%s", b, rel)
	}
	if _, err := intoCgroup(exec.Command("true"), filepath.Join(root, "nitropod-no-such-cgroup")); err == nil {
		t.Error("intoCgroup of a missing directory: no error")
	}
	if r, err := intoCgroup(exec.Command("true"), ""); err != nil || r == nil {
		t.Errorf(`intoCgroup(""): %v`, err)
	}
}
