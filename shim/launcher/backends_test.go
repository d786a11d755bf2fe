package launcher

import (
	"strings"
	"testing"
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
