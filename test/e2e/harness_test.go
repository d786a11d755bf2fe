//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/cluster"
	"github.com/nitropod/nitropod/test/images"
)

// env is one running cluster shared by the scenarios of a test.
type env struct {
	t      *testing.T
	c      *cluster.Cluster
	runDir string
	dir    string
	// applied is when applyTimed applied its Pod.
	applied time.Time
	// issuer signs licences the cluster's shim trusts (licence
	// enforcement is on in the enclave cluster).
	issuer *cluster.Issuer
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// binFinder resolves executables where testenv.Binary looks, as an error
// (tests check the ones they require with testenv.Binary first).
func binFinder() func(string) (string, error) {
	return func(name string) (string, error) {
		out := testenv.OutputDir()
		for _, d := range []string{filepath.Join(out, "tools", "bin"), filepath.Join(out, "bin")} {
			p := filepath.Join(d, name)
			if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 && !fi.IsDir() {
				return p, nil
			}
		}
		return exec.LookPath(name)
	}
}

// startCluster brings up the cluster and pushes the images every scenario
// uses; everything stops in t.Cleanup.
func startCluster(t *testing.T, opts cluster.Options) *env {
	t.Helper()
	testenv.Integration(t)
	testenv.RequireRoot(t)
	for _, b := range []string{"etcd", "kube-apiserver", "kube-scheduler", "kubelet", "kubectl", "registry", "containerd", "runc"} {
		testenv.Binary(t, b)
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		testenv.Missing(t, "CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)")
	}
	if opts.Dir == "" {
		// Not t.TempDir: containerd's state must survive until our own
		// cleanup has unmounted everything.
		dir, err := os.MkdirTemp("", "nitropod-e2e-")
		if err != nil {
			t.Fatal(err)
		}
		opts.Dir = dir
		t.Cleanup(func() { removeAll(t, dir) })
	}
	opts.Bin = binFinder()
	opts.Log = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := cluster.New(ctx, opts)
	if err != nil {
		dumpLogs(t, opts.Dir)
		t.Fatalf("starting cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, opts.Dir)
		}
		c.Close()
	})
	start := time.Now()
	if err := pushImages(c, filepath.Join(opts.Dir, "images")); err != nil {
		t.Fatalf("images: %v", err)
	}
	t.Logf("images built and pushed in %.1fs", time.Since(start).Seconds())
	return &env{t: t, c: c}
}

// pushImages builds nginx:latest, busybox:latest and the pause image and
// pushes them where containerd's mirrors look.
func pushImages(c *cluster.Cluster, work string) error {
	return images.PushAll(c.Registry, strings.TrimPrefix(cluster.PauseImage, "registry.k8s.io/"),
		filepath.Join(testenv.OutputDir(), "cache", "debs"), work)
}

// removeAll unmounts anything left below dir and removes it.
func removeAll(t *testing.T, dir string) {
	cluster.UnmountUnder(dir)
	if err := os.RemoveAll(dir); err != nil {
		t.Logf("removing %s: %v", dir, err)
	}
}

func dumpLogs(t *testing.T, dir string) {
	for _, name := range []string{"kubelet", "containerd", "kube-apiserver", "kube-scheduler", "webhook", "device-plugin"} {
		data, err := os.ReadFile(filepath.Join(dir, "logs", name+".log"))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("--- last lines of %s.log ---\n%s", name, strings.Join(lines, "\n"))
	}
}

func (e *env) kubectl(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return e.c.Kubectl(ctx, stdin, args...)
}

func (e *env) mustKubectl(stdin string, args ...string) string {
	e.t.Helper()
	out, err := e.kubectl(stdin, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) pod(name string) (*corev1.Pod, error) {
	out, err := e.kubectl("", "get", "pod", name, "-o", "json")
	if err != nil {
		return nil, err
	}
	var p corev1.Pod
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		return nil, fmt.Errorf("decoding pod %s: %w", name, err)
	}
	return &p, nil
}

// waitPod polls the Pod until cond holds or timeout passes.
func (e *env) waitPod(name string, timeout time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var last *corev1.Pod
	var lastErr error
	for time.Now().Before(deadline) {
		p, err := e.pod(name)
		if err == nil && cond(p) {
			return p
		}
		last, lastErr = p, err
		time.Sleep(time.Second)
	}
	desc, _ := e.kubectl("", "describe", "pod", name)
	e.t.Fatalf("pod %s not %s after %s (last error %v, phase %v)\n%s", name, what, timeout, lastErr, phase(last), desc)
	return nil
}

func phase(p *corev1.Pod) string {
	if p == nil {
		return "?"
	}
	return string(p.Status.Phase)
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// waitGone waits until the Pod no longer exists.
func (e *env) waitGone(name string, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := e.kubectl("", "get", "pod", name); err != nil && strings.Contains(err.Error(), "NotFound") {
			return
		}
		time.Sleep(time.Second)
	}
	e.t.Fatalf("pod %s still exists after %s", name, timeout)
}

// httpGet fetches url (a Pod IP on the cluster's bridge) with retries.
func httpGet(url string, timeout time.Duration) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		resp, err := client.Get(url)
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(body), nil
			}
			lastErr = fmt.Errorf("GET %s: %s %v", url, resp.Status, rerr)
		} else {
			lastErr = err
		}
		time.Sleep(500 * time.Millisecond)
	}
	return "", lastErr
}
