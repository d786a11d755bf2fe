package launcher

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNitroCLIBackendCgroup(t *testing.T) {
	for _, cg := range []string{"", "nitropod-enclaves", "/system.slice/nitropod-enclaves"} {
		if _, err := NewBackend(BackendConfig{Name: "nitro-cli", NitroCgroup: cg, StateDir: t.TempDir()}); err != nil {
			t.Errorf("nitro-cli backend with cgroup %q: %v", cg, err)
		}
	}
	for _, cg := range []string{"..", "../kubepods", "a/../../b", "a//b"} {
		_, err := NewBackend(BackendConfig{Name: "nitro-cli", NitroCgroup: cg})
		if err == nil || !strings.Contains(err.Error(), "nitro-cli cgroup") {
			t.Errorf("nitro-cli backend with cgroup %q: %v, want a refusal", cg, err)
		}
	}
}

// A record holding only the enclave name (the launcher died before it
// learnt the ID) still terminates the enclave, here on the FAKE nitro-cli
// of enclave/nitrocli (no Nitro hardware here).
func TestTerminateRecordedByName(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "nitro-cli")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nitropod/nitropod/enclave/nitrocli/internal/fakenitrocli").CombinedOutput(); err != nil {
		t.Fatalf("building the fake nitro-cli: %v\n%s", err, out)
	}
	state := t.TempDir()
	t.Setenv("FAKE_NITRO_CLI_STATE", state)
	t.Setenv("FAKE_NITRO_CLI_BOOT_DELAY", "10ms")
	eif := filepath.Join(t.TempDir(), "app.eif")
	if err := os.WriteFile(eif, []byte("eif"), 0o600); err != nil {
		t.Fatal(err)
	}
	const id = "3f2a9c0ffee"
	if out, err := exec.Command(bin, "run-enclave", "--eif-path", eif, "--memory", "512", "--cpu-count", "2", "--enclave-name", id).CombinedOutput(); err != nil {
		t.Fatalf("fake run-enclave: %v\n%s", err, out)
	}
	listed := func() []string {
		m, _ := filepath.Glob(filepath.Join(state, "enclaves", "*.json"))
		return m
	}
	if len(listed()) != 1 {
		t.Fatalf("fake lists %v", listed())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := TerminateRecorded(ctx, Record{Backend: "nitro-cli", EnclaveName: id, NitroCLI: bin}); err != nil {
		t.Fatal(err)
	}
	if m := listed(); len(m) != 0 {
		t.Errorf("enclave left after TerminateRecorded by name: %v", m)
	}
}
