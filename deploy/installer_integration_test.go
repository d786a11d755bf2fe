package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitropod/nitropod/internal/testenv"
)

// TestInstallScriptRealContainerdConfig runs the node installer against a
// scratch root whose /etc/containerd/config.toml is what this machine's real
// containerd writes (`containerd config default`), and has that containerd
// parse the result: the nitro runtime is there with its runtime type, the
// runc runtime and everything else is untouched, and a second run changes
// nothing.
func TestInstallScriptRealContainerdConfig(t *testing.T) {
	testenv.Integration(t)
	ctrd := testenv.Binary(t, "containerd")
	dir := t.TempDir()
	host, src, cfg := filepath.Join(dir, "host"), filepath.Join(dir, "src"), filepath.Join(dir, "config")
	for _, d := range []string{filepath.Join(host, "etc", "containerd"), src, cfg} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	def, err := exec.Command(ctrd, "config", "default").Output()
	if err != nil {
		t.Fatalf("containerd config default: %v", err)
	}
	main := filepath.Join(host, "etc", "containerd", "config.toml")
	if err := os.WriteFile(main, def, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"containerd-shim-nitro-v1", "nitropod-launcher", "nitropod-fetch", "nitropod-init", "nitropod"} {
		if err := os.WriteFile(filepath.Join(src, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	chart := filepath.Join(repoDeploy(t), "helm", "nitropod", "files")
	for _, f := range []string{"install.sh", "containerd-nitro.toml"} {
		b, err := os.ReadFile(filepath.Join(chart, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfg, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(cfg, "shim.toml"), []byte("backend = \"qemu\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func() string {
		t.Helper()
		cmd := exec.Command("sh", filepath.Join(cfg, "install.sh"))
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOST=" + host, "HOST_PROC=" + filepath.Join(dir, "proc"), "SRC=" + src, "CFG=" + cfg, "RESTART_CONTAINERD=false"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("install.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	dump := func() string {
		t.Helper()
		out, err := exec.Command(ctrd, "--config", main, "config", "dump").CombinedOutput()
		if err != nil {
			t.Fatalf("containerd cannot read the installed config: %v\n%s", err, out)
		}
		return string(out)
	}
	before := dump()
	if out := run(); !strings.Contains(out, "changed=1") {
		t.Errorf("first run changed nothing:\n%s", out)
	}
	after := dump()
	if !strings.Contains(after, `runtime_type = "io.containerd.nitro.v1"`) {
		t.Errorf("containerd's view of the installed config has no nitro runtime:\n%s", after)
	}
	// Everything containerd had before is still there, line for line.
	have := map[string]int{}
	for _, l := range strings.Split(after, "\n") {
		have[l]++
	}
	for _, l := range strings.Split(before, "\n") {
		if have[l] == 0 {
			t.Errorf("line %q of the original config is gone after the install", l)
		}
		have[l]--
	}
	if out := run(); !strings.Contains(out, "changed=0") {
		t.Errorf("second run changed something:\n%s", out)
	}
}
