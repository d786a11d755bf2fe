package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/pelletier/go-toml/v2"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/testenv"
)

// TestRenderDropIn checks that deploy/'s runtime lines, as the harness uses
// them, configure the nitro runtime with the project's names and only the
// two paths changed.
func TestRenderDropIn(t *testing.T) {
	src := filepath.Join(testenv.RepoRoot(), "deploy", "helm", "nitropod", "files", "containerd-nitro.toml")
	got, err := RenderDropIn(src, "/x/bin/containerd-shim-nitro-v1", "/x/shim.toml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Plugins map[string]struct {
			Containerd struct {
				Runtimes map[string]struct {
					RuntimeType    string   `toml:"runtime_type"`
					RuntimePath    string   `toml:"runtime_path"`
					PodAnnotations []string `toml:"pod_annotations"`
					Options        struct {
						ConfigPath string
					} `toml:"options"`
				} `toml:"runtimes"`
			} `toml:"containerd"`
		} `toml:"plugins"`
	}
	if err := toml.Unmarshal([]byte(got), &cfg); err != nil {
		t.Fatalf("rendered runtime lines are not TOML: %v\n%s", err, got)
	}
	rt, ok := cfg.Plugins["io.containerd.grpc.v1.cri"].Containerd.Runtimes[nitropod.RuntimeClassName]
	if !ok {
		t.Fatalf("no runtime %q in\n%s", nitropod.RuntimeClassName, got)
	}
	if diff := cmp.Diff([]string{rt.RuntimeType, rt.RuntimePath, rt.Options.ConfigPath},
		[]string{nitropod.RuntimeType, "/x/bin/containerd-shim-nitro-v1", "/x/shim.toml"}); diff != "" {
		t.Errorf("runtime (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(rt.PodAnnotations, []string{"nitro.k8s.anjuna.io/*", nitropod.AnnotationPrefix + "*"}); diff != "" {
		t.Errorf("pod_annotations (-got +want):\n%s", diff)
	}
	orig, _ := os.ReadFile(src)
	if strings.Count(string(orig), "\n") != strings.Count(got, "\n") {
		t.Errorf("rendering changed the number of lines")
	}

	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[plugins]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := RenderDropIn(bad, "/a", "/b"); err == nil {
		t.Errorf("RenderDropIn of a file without the shim path succeeded; want an error")
	}
}

func TestUnescapeMount(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/tmp/a", "/tmp/a"},
		{`/tmp/with\040space`, "/tmp/with space"},
		{`/tmp/tab\011x\134y`, "/tmp/tab\tx\\y"},
		{`/tmp/trailing\`, `/tmp/trailing\`},
	} {
		if got := unescapeMount(tc.in); got != tc.want {
			t.Errorf("unescapeMount(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

func TestTLSFromRendered(t *testing.T) {
	rendered := []byte(`---
apiVersion: v1
kind: ConfigMap
data: {a: b}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
data:
  tls.crt: Y2VydA==
  tls.key: a2V5
`)
	cert, key, err := tlsFromRendered(rendered)
	if err != nil {
		t.Fatal(err)
	}
	if string(cert) != "cert" || string(key) != "key" {
		t.Errorf("tlsFromRendered = %q, %q; want cert, key", cert, key)
	}
	if _, _, err := tlsFromRendered([]byte("kind: ConfigMap\n")); err == nil {
		t.Errorf("tlsFromRendered without a TLS Secret succeeded; want an error")
	}
}
