package launcher

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/internal/shimtest"
)

// recordingStarter is a backend that records where it was told to start
// its processes.
type recordingStarter struct{ dir string }

func (r *recordingStarter) StartInCgroup(dir string) { r.dir = dir }

// withCgroupRoot points the launcher at another cgroupfs for one test.
func withCgroupRoot(t *testing.T, root string) {
	old := cgroupRoot
	cgroupRoot = root
	t.Cleanup(func() { cgroupRoot = old })
}

// TestPlaceBackendV2 runs on a real cgroup v2 hierarchy: the backend is
// told to start QEMU in the enclave cgroup's directory, no thread is moved
// (v2 cannot move a single thread), and a missing enclave cgroup is an
// error rather than QEMU silently charged to the launcher.
func TestPlaceBackendV2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root := shimtest.V2Hierarchy(t)
	withCgroupRoot(t, root)
	rel := fmt.Sprintf("/nitropod-launcher-test-%d", os.Getpid())
	if err := os.Mkdir(filepath.Join(root, rel), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Join(root, rel)) })
	var b recordingStarter
	if err := placeBackend(&b, rel); err != nil {
		t.Fatal(err)
	}
	if b.dir != filepath.Join(root, rel) {
		t.Errorf("backend told %q, want %q", b.dir, filepath.Join(root, rel))
	}
	if err := placeBackend(&recordingStarter{}, rel+"-missing"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing enclave cgroup: %v", err)
	}
	if err := joinCgroupThread(rel, unix.Gettid()); err != nil {
		t.Errorf("joinCgroupThread on v2: %v", err)
	}
	if procs, _ := os.ReadFile(filepath.Join(root, rel, "cgroup.procs")); len(procs) != 0 {
		t.Errorf("a process was moved into the enclave cgroup on v2: %q", procs)
	}
}

// TestPlaceBackendV1 is the v1 side: the backend is not told anything
// (the forking thread joins the cgroup instead), on this machine's cgroupfs
// when it is v1 or a FAKE v1 root (a plain directory) otherwise.
func TestPlaceBackendV1(t *testing.T) {
	if !shimtest.NodeCgroupfs().V2 {
		withCgroupRoot(t, "/sys/fs/cgroup")
	} else {
		withCgroupRoot(t, filepath.Join(t.TempDir(), "fake-cgroup-v1"))
		if err := os.Mkdir(cgroupRoot, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var b recordingStarter
	if err := placeBackend(&b, "/nitropod/ns/id"); err != nil {
		t.Fatal(err)
	}
	if b.dir != "" {
		t.Errorf("v1: backend told to start in %q", b.dir)
	}
	if err := placeBackend(&b, ""); err != nil || b.dir != "" {
		t.Errorf(`no enclave cgroup: %v, %q`, err, b.dir)
	}
}
