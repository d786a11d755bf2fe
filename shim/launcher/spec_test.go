package launcher

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSpecRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := Spec{ID: "c1", Bundle: dir, EIFPath: "/cache/x.eif", CPUs: 2, CPUIDs: []int{2, 3}, MemoryMiB: 512, Debug: true,
		Backend: BackendConfig{Name: "qemu", QEMUAccel: "tcg", StateDir: "/run/nitropod"},
		Stdout:  "/fifo/out", Stderr: "/fifo/err", NetNS: "/var/run/netns/cni-1", Ports: []uint16{80}}
	if err := WriteSpec(want); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, SpecFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("spec file mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := ReadSpec(filepath.Join(dir, SpecFile))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
	if err := os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"id":"x"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSpec(filepath.Join(dir, "bad.json")); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("incomplete spec: err = %v", err)
	}
}

func TestNewBackend(t *testing.T) {
	if _, err := NewBackend(BackendConfig{Name: "firecracker"}); err == nil || !strings.Contains(err.Error(), `"firecracker"`) {
		t.Errorf("unknown backend: err = %v", err)
	}
	if _, err := NewBackend(BackendConfig{Name: "qemu", QEMUAccel: "hvf", StateDir: t.TempDir()}); err == nil {
		t.Error("bad qemu accelerator accepted")
	}
	if _, err := NewBackend(BackendConfig{Name: "nitro-cli"}); err != nil {
		t.Errorf("nitro-cli backend: %v", err)
	}
}
