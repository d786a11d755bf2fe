package shim

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eif/ramdisk"
)

// TestPlanContainerSecurity checks that the OCI security context reaches
// the measured process, and that none leaves the process as before.
func TestPlanContainerSecurity(t *testing.T) {
	cfg := DefaultConfig()
	p, err := PlanContainer(testSpec(nil), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p.Process.Security != nil {
		t.Errorf("a spec without a security context gives %+v", p.Process.Security)
	}

	spec := testSpec(nil)
	spec.Root = &specs.Root{Path: "rootfs", Readonly: true}
	spec.Process.NoNewPrivileges = true
	spec.Process.Capabilities = &specs.LinuxCapabilities{
		Bounding:  []string{"CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_CHOWN"},
		Effective: []string{"CAP_NET_BIND_SERVICE"},
	}
	prof := &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Syscalls: []specs.LinuxSyscall{{Names: []string{"read", "write"}, Action: specs.ActAllow}}}
	spec.Linux = &specs.Linux{
		MaskedPaths:   []string{"/proc/kcore"},
		ReadonlyPaths: []string{"/proc/sys"},
		Sysctl:        map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"},
		Seccomp:       prof,
	}
	p, err = PlanContainer(spec, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := &ramdisk.Security{
		Capabilities:    &ramdisk.Capabilities{Bounding: []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE"}, Effective: []string{"CAP_NET_BIND_SERVICE"}},
		NoNewPrivileges: true,
		ReadonlyRootfs:  true,
		MaskedPaths:     []string{"/proc/kcore"},
		ReadonlyPaths:   []string{"/proc/sys"},
		Sysctls:         map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"},
		Seccomp:         prof,
	}
	if d := cmp.Diff(want, p.Process.Security); d != "" {
		t.Errorf("security (-want +got):\n%s", d)
	}

	for _, c := range []struct {
		mod  func(*specs.Spec)
		want string
	}{
		{func(s *specs.Spec) {
			s.Process.Capabilities = &specs.LinuxCapabilities{Effective: []string{"CAP_BOGUS"}}
		}, "unknown capability"},
		{func(s *specs.Spec) { s.Linux = &specs.Linux{Sysctl: map[string]string{"../x": "1"}} }, "sysctl"},
		{func(s *specs.Spec) {
			s.Linux = &specs.Linux{Seccomp: &specs.LinuxSeccomp{DefaultAction: specs.ActNotify}}
		}, "SCMP_ACT_NOTIFY"},
	} {
		s := testSpec(nil)
		c.mod(s)
		if _, err := PlanContainer(s, cfg); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "security context") {
			t.Errorf("PlanContainer: %v, want an error about %q", err, c.want)
		}
	}
}

// TestInheritSandboxSysctls checks that the Pod's sysctls, which CRI
// writes only into the sandbox's spec, reach the enclave's process.
func TestInheritSandboxSysctls(t *testing.T) {
	dir := t.TempDir()
	sbDir := filepath.Join(dir, "sandbox1")
	if err := os.MkdirAll(sbDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sb, _ := json.Marshal(specs.Spec{Linux: &specs.Linux{Sysctl: map[string]string{"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "0"}}})
	if err := os.WriteFile(filepath.Join(sbDir, "config.json"), sb, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := testSpec(map[string]string{nitropod.CRIContainerType: nitropod.CRIContainerTypeApp, nitropod.CRIContainerName: "app",
		nitropod.CRISandboxID: "sandbox1", nitropod.CRISandboxNamespace: "ns", nitropod.CRISandboxName: "pod"})
	spec.Linux = &specs.Linux{Sysctl: map[string]string{"net.ipv4.ip_forward": "1"}}
	p, err := PlanContainer(spec, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.InheritSandboxSysctls(spec, filepath.Join(dir, "ctr1")); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1"}
	if p.Process.Security == nil || !maps.Equal(p.Process.Security.Sysctls, want) {
		t.Errorf("sysctls %+v, want %v", p.Process.Security, want)
	}

	spec.Annotations[nitropod.CRISandboxID] = "../sandbox1"
	if err := p.InheritSandboxSysctls(spec, filepath.Join(dir, "ctr1")); err == nil {
		t.Error("a sandbox id with a slash was followed")
	}
	// Not through CRI (ctr run): nothing to inherit, nothing read.
	plain := testSpec(nil)
	p2, _ := PlanContainer(plain, DefaultConfig())
	if err := p2.InheritSandboxSysctls(plain, filepath.Join(dir, "ctr2")); err != nil || p2.Process.Security != nil {
		t.Errorf("ctr run: %v, %+v", err, p2.Process.Security)
	}
}
