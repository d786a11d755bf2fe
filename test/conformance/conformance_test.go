//go:build conformance

package conformance

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/ctrtest"
	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/images"
)

const (
	criNS    = "k8s.io"
	pauseRef = "registry.k8s.io/pause:conformance"
	// The images critest v1.34 creates its containers from.
	busyboxRef = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
	nginxRef   = "registry.k8s.io/e2e-test-images/nginx:1.14-2"
	httpdRef   = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4"
	podSubnet  = "10.251.78.0/24"
	// suiteTimeout bounds one handler's run (critest's --ginkgo.timeout).
	suiteTimeout = 12 * time.Minute
)

// expected reads test/conformance/expected.txt: "HANDLER MIN_PASSED" lines.
func expected(t *testing.T) map[string]int {
	t.Helper()
	b, err := os.ReadFile("expected.txt")
	if err != nil {
		t.Fatalf("reading expected pass counts: %v", err)
	}
	m := map[string]int{}
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		n, err := strconv.Atoi(f[len(f)-1])
		if len(f) != 2 || err != nil {
			t.Fatalf("expected.txt: bad line %q (want: HANDLER MIN_PASSED)", l)
		}
		m[f[0]] = n
	}
	return m
}

var containerIDRE = regexp.MustCompile(`[0-9a-f]{64}`)

// cgroupDirs lists every directory of the node's cgroup hierarchies.
func cgroupDirs() map[string]bool {
	dirs := map[string]bool{}
	_ = filepath.WalkDir("/sys/fs/cgroup", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs[p] = true
		}
		return nil
	})
	return dirs
}

func TestConformance(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	critest := testenv.Binary(t, "critest")
	crictl := testenv.Binary(t, "crictl")
	testenv.Binary(t, "nsenter")
	handlers := strings.Split(envOr("CONFORMANCE_HANDLERS", "runc,nitro"), ",")
	want := expected(t)

	dir := t.TempDir()
	cniConf := filepath.Join(dir, "net.d")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cniConf, "10-conformance.conflist"), []byte(fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "conformance",
  "plugins": [
    {"type": "bridge", "bridge": "critest0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`, filepath.Join(dir, "ipam"), podSubnet)), 0o644); err != nil {
		t.Fatal(err)
	}
	cgBefore := cgroupDirs()
	e := shimtest.Start(t, shimtest.Options{Containerd: ctrtest.Options{NetNS: true, CRI: &ctrtest.CRIOptions{
		SandboxImage:   pauseRef,
		Runtimes:       map[string]string{nitropod.RuntimeClassName: nitropod.RuntimeType},
		PodAnnotations: []string{"nitro.k8s.anjuna.io/*", "nitropod.io/*"},
		CNIConfDir:     cniConf,
	}}})

	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(len(handlers)+1)*suiteTimeout)
	defer cancel()
	importImages(t, ctx, e)

	outDir := filepath.Join(testenv.OutputDir(), "conformance")
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, h := range handlers {
		h := strings.TrimSpace(h)
		t.Run(h, func(t *testing.T) {
			handler := h
			if h == "runc" {
				handler = "" // the default handler, as a kubelet without RuntimeClass asks
			}
			args := []string{"--net=" + e.Ctrd.NetNSPath, critest,
				"--runtime-endpoint=unix://" + e.Ctrd.Socket, "--image-endpoint=unix://" + e.Ctrd.Socket,
				"--runtime-handler=" + handler,
				"--ginkgo.timeout=" + suiteTimeout.String(), "--ginkgo.no-color", "--ginkgo.v"}
			if f := os.Getenv("CONFORMANCE_FOCUS"); f != "" {
				args = append(args, "--ginkgo.focus="+f)
			}
			if s := os.Getenv("CONFORMANCE_SKIP"); s != "" {
				args = append(args, "--ginkgo.skip="+s)
			}
			logPath := filepath.Join(outDir, h+".log")
			logf, err := os.Create(logPath)
			if err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			cmd := exec.CommandContext(ctx, "nsenter", args...)
			cmd.Dir = dir
			cmd.Stdout = &multi{&out, logf}
			cmd.Stderr = cmd.Stdout
			cmd.WaitDelay = 30 * time.Second
			start := time.Now()
			runErr := cmd.Run()
			logf.Close()
			wall := time.Since(start)
			r, err := ParseSummary(out.String())
			if err != nil {
				t.Fatalf("critest --runtime-handler=%q (%v, log %s): %v", handler, runErr, logPath, err)
			}
			t.Logf("critest handler %s: %d passed, %d failed, %d pending, %d skipped of %d specs (%d ran) in %.0fs; log %s",
				h, r.Passed, r.Failed, r.Pending, r.Skippd, r.Total, r.Ran, wall.Seconds(), logPath)
			for _, f := range r.Failures {
				t.Logf("  %s", f)
			}
			fmt.Printf("BENCH conformance handler=%s passed=%d failed=%d pending=%d skipped=%d specs=%d wall_s=%.0f\n",
				h, r.Passed, r.Failed, r.Pending, r.Skippd, r.Total, wall.Seconds())
			if floor, ok := want[h]; ok && os.Getenv("CONFORMANCE_FOCUS") == "" && os.Getenv("CONFORMANCE_SKIP") == "" && r.Passed < floor {
				t.Errorf("handler %s: %d specs passed, expected.txt records %d (a regression; see docs/COMPATIBILITY.md)", h, r.Passed, floor)
			}
			assertNoPods(t, crictl, e)
			if left := e.Leftovers(); len(left) > 0 {
				// Give the shims their usual grace period.
				e.AssertNothingLeft(t)
			}
		})
	}
	e.AssertNothingLeft(t)
	// Every shim exits once its pods are gone.
	deadline := time.Now().Add(20 * time.Second)
	for e.ShimProcesses() > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if n := e.ShimProcesses(); n > 0 {
		t.Errorf("%d nitro shim processes still running after the suite", n)
	}
	var newCg []string
	for d := range cgroupDirs() {
		// Only cgroups named after a sandbox or container id: next to a
		// private systemd (run.sh) its own slices appear during the run.
		if !cgBefore[d] && containerIDRE.MatchString(filepath.Base(d)) {
			newCg = append(newCg, d)
		}
	}
	sort.Strings(newCg)
	if len(newCg) > 0 {
		t.Errorf("cgroups left behind by the suite:\n%s", strings.Join(newCg, "\n"))
	}
}

// assertNoPods checks critest removed every sandbox and container it made.
func assertNoPods(t *testing.T, crictl string, e *shimtest.Env) {
	t.Helper()
	for _, what := range []string{"pods", "ps"} {
		args := []string{"--net=" + e.Ctrd.NetNSPath, crictl, "--runtime-endpoint", "unix://" + e.Ctrd.Socket, what, "-q"}
		if what == "ps" {
			args = append(args, "-a")
		}
		cmd := exec.Command("nsenter", args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Errorf("crictl %s: %v: %s", what, err, stderr.String())
			continue
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			t.Errorf("crictl %s: left behind by the suite:\n%s", what, s)
		}
	}
}

// importImages builds the images critest creates containers from and
// imports them under the names critest uses: busybox, an nginx (Debian's
// packages) with busybox's shell and tools (critest execs sh and cat in it
// and reads /var/run/nginx.pid), an httpd (busybox's httpd on port 80) and
// the pause image.
func importImages(t *testing.T, ctx context.Context, e *shimtest.Env) {
	t.Helper()
	work := t.TempDir()
	bbBin := testenv.Binary(t, "busybox")
	pause, err := images.Pause(work)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := images.Busybox(bbBin, work)
	if err != nil {
		t.Fatal(err)
	}
	nginxRoot := filepath.Join(work, "nginx")
	if err := images.BusyboxRootfs(bbBin, nginxRoot); err != nil {
		t.Fatal(err)
	}
	if err := images.NginxRootfs(filepath.Join(testenv.OutputDir(), "cache", "debs"), nginxRoot); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(nginxRoot, "var"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../run", filepath.Join(nginxRoot, "var", "run")); err != nil {
		t.Fatal(err)
	}
	nginx, err := images.FromDir(nginxRoot, v1.Config{
		Cmd:          []string{"nginx", "-g", "daemon off;"},
		Env:          []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		ExposedPorts: map[string]struct{}{"80/tcp": {}},
		StopSignal:   "SIGQUIT",
	})
	if err != nil {
		t.Fatal(err)
	}
	httpdRoot := filepath.Join(work, "httpd")
	if err := images.BusyboxRootfs(bbBin, httpdRoot); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(httpdRoot, "var", "www", "index.html"), []byte("<html><body><h1>It works!</h1></body></html>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	httpd, err := images.FromDir(httpdRoot, v1.Config{
		Cmd:          []string{"sh", "-c", "echo httpd starting; exec httpd -f -v -p 80 -h /var/www"},
		Env:          []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		ExposedPorts: map[string]struct{}{"80/tcp": {}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for ref, img := range map[string]v1.Image{pauseRef: pause, busyboxRef: bb, nginxRef: nginx, httpdRef: httpd} {
		if err := e.Ctrd.Import(ctx, criNS, ref, img); err != nil {
			t.Fatalf("importing %s: %v", ref, err)
		}
	}
}

type multi []interface{ Write([]byte) (int, error) }

func (m *multi) Write(p []byte) (int, error) {
	for _, w := range *m {
		if _, err := w.Write(p); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
