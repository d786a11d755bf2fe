package shim

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/api/types"
)

func TestEIFKey(t *testing.T) {
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs")
	upper := filepath.Join(dir, "upper")
	for _, d := range []string{blobs, upper} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(blobs, "bzImage"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	initPath := filepath.Join(dir, "init")
	if err := os.WriteFile(initPath, []byte("i"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.BlobsDir, cfg.InitPath = blobs, initPath
	overlay := func(lower, work string) []*types.Mount {
		return []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"index=off", "workdir=" + work, "upperdir=" + upper, "lowerdir=" + lower}}}
	}
	plan := Plan{Enclave: true}
	plan.Process.Args = []string{"sh"}
	key := func(ms []*types.Mount, p Plan, c Config) string {
		t.Helper()
		k, err := EIFKey(ms, filepath.Join(dir, "rootfs"), p, c)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	base := key(overlay("/snap/1/fs", "/snap/9/work"), plan, cfg)
	if got := key(overlay("/snap/1/fs", "/snap/7/work"), plan, cfg); got != base {
		t.Error("the container's own workdir (and empty upperdir) changed the key")
	}
	if got := key(overlay("/snap/2/fs", "/snap/9/work"), plan, cfg); got == base {
		t.Error("another image (lowerdir) kept the key")
	}
	p2 := plan
	p2.Process.Args = []string{"sh", "-c", "true"}
	if got := key(overlay("/snap/1/fs", "/snap/9/work"), p2, cfg); got == base {
		t.Error("another process kept the key")
	}
	p3 := plan
	p3.Debug = true
	if got := key(overlay("/snap/1/fs", "/snap/9/work"), p3, cfg); got == base {
		t.Error("debug mode kept the key")
	}
	// Sizing does not go into the EIF.
	p4 := plan
	p4.CPUs, p4.MemoryMiB, p4.CPUIDs = 8, 4096, []int{2, 3}
	if got := key(overlay("/snap/1/fs", "/snap/9/work"), p4, cfg); got != base {
		t.Error("enclave size changed the key")
	}
	if err := os.WriteFile(filepath.Join(upper, "new"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := key(overlay("/snap/1/fs", "/snap/9/work"), plan, cfg); got == base {
		t.Error("a written upperdir kept the key")
	}
	if err := os.WriteFile(initPath, []byte("init v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := key(overlay("/snap/1/fs", "/snap/9/work"), plan, cfg); got == base {
		t.Error("a new init kept the key")
	}
	cfg.BlobsDir = filepath.Join(dir, "missing")
	if _, err := EIFKey(nil, dir, plan, cfg); err == nil {
		t.Error("missing blob set accepted")
	}
}
