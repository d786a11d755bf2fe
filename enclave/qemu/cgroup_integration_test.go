package qemu_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/internal/testimage"
)

// TestStartInCgroupV2 boots an enclave whose QEMU is started in a cgroup of
// a real cgroup v2 hierarchy (StartInCgroup, as the launcher does on a v2
// node): QEMU is the cgroup's only process and the test process is not in
// it.
func TestStartInCgroupV2(t *testing.T) {
	b, _ := backend(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root := shimtest.V2Hierarchy(t)
	dir := filepath.Join(root, fmt.Sprintf("nitropod-qemu-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	b.StartInCgroup(dir)
	path := buildEIF(t, busybox(t, testimage.Cmd("sh", "-c", "echo up; sleep 600")), false)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := enclave.Start(ctx, b, enclave.Request{EIFPath: path, CPUs: 1, MemoryMiB: 256}, enclave.RunIO{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Terminate(context.Background()); _, _ = s.Wait() }()
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	pids := strings.Fields(string(procs))
	if len(pids) != 1 {
		t.Fatalf("cgroup.procs = %q, want QEMU alone", procs)
	}
	if cl, _ := os.ReadFile("/proc/" + pids[0] + "/cmdline"); !strings.Contains(string(cl), "qemu-system") {
		t.Errorf("process %s in the cgroup is %q, not QEMU", pids[0], cl)
	}
	if pids[0] == strconv.Itoa(os.Getpid()) {
		t.Error("the test process is in the enclave cgroup")
	}
	if err := s.Terminate(ctx); err != nil {
		t.Fatal(err)
	}
	_, _ = s.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs, _ = os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if strings.TrimSpace(string(procs)) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cgroup.procs after Terminate: %q", procs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
