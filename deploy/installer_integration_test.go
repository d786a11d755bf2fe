package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nitropod/nitropod/internal/testenv"
)

// TestInstallScriptRealContainerdConfig runs the node installer against a
// scratch root whose /etc/containerd/config.toml is what a real containerd
// writes (`containerd config default`) — Debian's 1.6 and the 1.7 and 2.2
// that hack/build-tools.sh builds (config version 2, 2 and 3) — plus 2.2
// reading a version 2 file, and has that containerd parse the result: the
// nitro runtime is there with its runtime type in the CRI plugin of that
// version, everything else is untouched, and a second run changes nothing.
// A version 1 file (no version line) is refused with the way out.
func TestInstallScriptRealContainerdConfig(t *testing.T) {
	testenv.Integration(t)
	for _, tc := range []struct {
		name, binary string
		// config is the file to start from: "" is the binary's default.
		config func(t *testing.T) []byte
		// runtime is the nitro runtime's table in `containerd config dump`.
		runtime string
	}{
		{"containerd 1.6", "containerd", nil, `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nitro]`},
		{"containerd 1.7", "containerd-1.7", nil, `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nitro]`},
		{"containerd 2.2, config version 3", "containerd-2.2", nil, `[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nitro]`},
		{"containerd 2.2, config version 2", "containerd-2.2", func(t *testing.T) []byte {
			return defaultConfig(t, testenv.Binary(t, "containerd-1.7"))
		}, `[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nitro]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctrd := testenv.Binary(t, tc.binary)
			def := defaultConfig(t, ctrd)
			if tc.config != nil {
				def = tc.config(t)
			}
			in := newInstallRoot(t, def)
			dump := func() string {
				t.Helper()
				out, err := exec.Command(ctrd, "--config", in.main, "config", "dump").CombinedOutput()
				if err != nil {
					t.Fatalf("%s cannot read the installed config: %v\n%s", tc.binary, err, out)
				}
				return string(out)
			}
			before := dump()
			if out, err := in.run(); err != nil || !strings.Contains(out, "changed=1") {
				t.Fatalf("first run: %v\n%s", err, out)
			}
			after := dump()
			if !strings.Contains(after, tc.runtime) || !runtimeTypeRe.MatchString(after) {
				t.Errorf("%s's view of the installed config has no nitro runtime %s with its runtime type:\n%s", tc.binary, tc.runtime, after)
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
			if out, err := in.run(); err != nil || !strings.Contains(out, "changed=0") {
				t.Errorf("second run changed something (%v):\n%s", err, out)
			}
		})
	}
	t.Run("version 1 is refused", func(t *testing.T) {
		in := newInstallRoot(t, []byte("root = \"/var/lib/containerd\"\n"))
		out, err := in.run()
		if err == nil || !strings.Contains(out, "config version 1 (no version line)") || !strings.Contains(out, "containerd config migrate") {
			t.Errorf("install over a version 1 file: %v\n%s\nwant a refusal that names the version and the way out", err, out)
		}
		if b, _ := os.ReadFile(in.main); string(b) != "root = \"/var/lib/containerd\"\n" {
			t.Errorf("the refused file was changed:\n%s", b)
		}
	})
}

var runtimeTypeRe = regexp.MustCompile(`runtime_type = ["']io\.containerd\.nitro\.v1["']`)

func defaultConfig(t *testing.T, ctrd string) []byte {
	t.Helper()
	def, err := exec.Command(ctrd, "config", "default").Output()
	if err != nil {
		t.Fatalf("%s config default: %v", ctrd, err)
	}
	return def
}

// installRoot is a scratch host root for install.sh.
type installRoot struct {
	t                   *testing.T
	dir, host, src, cfg string
	main                string
}

func newInstallRoot(t *testing.T, config []byte) installRoot {
	t.Helper()
	dir := t.TempDir()
	in := installRoot{t: t, dir: dir, host: filepath.Join(dir, "host"), src: filepath.Join(dir, "src"), cfg: filepath.Join(dir, "config")}
	in.main = filepath.Join(in.host, "etc", "containerd", "config.toml")
	for _, d := range []string{filepath.Dir(in.main), in.src, in.cfg} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(in.main, config, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"containerd-shim-nitro-v1", "nitropod-launcher", "nitropod-fetch", "nitropod-init", "nitropod"} {
		if err := os.WriteFile(filepath.Join(in.src, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	chart := filepath.Join(repoDeploy(t), "helm", "nitropod", "files")
	for _, f := range []string{"install.sh", "containerd-nitro.toml", "containerd-nitro-v3.toml"} {
		b, err := os.ReadFile(filepath.Join(chart, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(in.cfg, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(in.cfg, "shim.toml"), []byte("backend = \"qemu\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return in
}

// run runs install.sh (without restarting containerd) and returns its output.
func (in installRoot) run() (string, error) {
	cmd := exec.Command("sh", filepath.Join(in.cfg, "install.sh"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOST=" + in.host, "HOST_PROC=" + filepath.Join(in.dir, "proc"), "SRC=" + in.src, "CFG=" + in.cfg, "RESTART_CONTAINERD=false"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
