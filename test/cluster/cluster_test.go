package cluster

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// TestStartAndWait runs a real process through Cluster.Start and checks
// that waitProc reports its exit with the log's tail at once, and that
// waitFor reports a timeout with the last error.
func TestStartAndWait(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		testenv.Missing(t, "sh")
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{opts: Options{Dir: dir}}
	defer c.Close()
	p, err := c.Start("dies", false, []string{"MSG=boom"}, sh, "-c", `echo "$MSG"; exit 2`)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	err = c.waitProc(ctx, p, time.Minute, func() error { return errors.New("not yet") })
	if err == nil || !strings.Contains(err.Error(), "dies exited") || !strings.Contains(err.Error(), "boom") {
		t.Errorf("waitProc = %v; want the exit with the log's tail", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("waitProc took %s; want it to stop when the process exits", d)
	}
	if p.Log != filepath.Join(dir, "logs", "dies.log") {
		t.Errorf("log at %s; want under %s/logs", p.Log, dir)
	}

	last := errors.New("still down")
	err = waitFor(ctx, 50*time.Millisecond, 10*time.Millisecond, func() error { return last })
	if !errors.Is(err, last) || !strings.Contains(err.Error(), "timed out after 50ms") {
		t.Errorf("waitFor = %v; want a timeout wrapping %v", err, last)
	}
}

// TestMachineLock checks that a second cluster cannot take the machine
// while a first one holds it, and can once the first let go.
func TestMachineLock(t *testing.T) {
	old := MachineLock
	MachineLock = filepath.Join(t.TempDir(), "cluster.lock")
	t.Cleanup(func() { MachineLock = old })
	unlock, err := lockMachine()
	if err != nil {
		t.Fatalf("first lock: %v", err)
	}
	if u, err := lockMachine(); err == nil {
		u()
		t.Fatal("a second cluster took the machine lock while the first holds it")
	} else if !strings.Contains(err.Error(), "another test cluster runs on this machine") {
		t.Errorf("second lock error = %v; want it to say another cluster runs", err)
	}
	// New refuses before it touches anything.
	dir := t.TempDir()
	if _, err := New(context.Background(), Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "another test cluster") {
		t.Errorf("New while the machine is locked = %v; want a refusal", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a refused New created %d entries in its directory", len(entries))
	}
	unlock()
	u, err := lockMachine()
	if err != nil {
		t.Fatalf("lock after the first cluster let go: %v", err)
	}
	u()
}

// TestRetryTakenPort: a start that lost its port to another process is
// tried again; other failures are not.
func TestRetryTakenPort(t *testing.T) {
	calls := 0
	err := retryTakenPort(func() error {
		calls++
		if calls < 3 {
			return errors.New("registry exited: listen tcp 10.213.0.1:4000: bind: address already in use")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("retryTakenPort = %v after %d calls; want success on the third", err, calls)
	}
	calls = 0
	if err := retryTakenPort(func() error { calls++; return errors.New("no such file") }); err == nil || calls != 1 {
		t.Errorf("retryTakenPort of another failure = %v after %d calls; want it at once", err, calls)
	}
}
