package shim_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/ctrtest"
	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/images"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const (
	criNS     = "k8s.io"
	pauseRef  = "registry.k8s.io/pause:nitrotest"
	podSubnet = "10.251.77.0/24"
)

// crictl runs in containerd's network namespace, where the CRI streaming
// server (exec, logs -f) listens.
type crictl struct {
	bin, sock, netns string
}

func (c crictl) run(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--runtime-endpoint", "unix://" + c.sock, "--image-endpoint", "unix://" + c.sock, "--timeout", "4m"}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + c.netns, c.bin}, full...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), fmt.Errorf("crictl %s: %w: %s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	if args[0] == "logs" {
		// crictl logs copies the container's stderr to its own stderr.
		return strings.TrimSpace(string(out) + stderr.String()), nil
	}
	return strings.TrimSpace(string(out)), nil
}

func writeJSON(t *testing.T, path string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCRIPodWithEnclave runs a Pod through containerd's CRI with the nitro
// handler: the sandbox (pause) through runc, an app container in an enclave
// whose output reaches the kubelet log and whose port answers on the Pod IP
// of a bridge inside a network namespace the test made.
func TestCRIPodWithEnclave(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	cc := crictl{bin: testenv.Binary(t, "crictl")}
	testenv.Binary(t, "nsenter")
	dir := t.TempDir()
	cniConf := filepath.Join(dir, "net.d")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cniConf, "10-nitrotest.conflist"), []byte(fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "nitrotest",
  "plugins": [
    {"type": "bridge", "bridge": "nitrotest0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]]}}
  ]
}`, filepath.Join(dir, "ipam"), podSubnet)), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnvOpts(t, ctrtest.Options{NetNS: true, CRI: &ctrtest.CRIOptions{
		SandboxImage:   pauseRef,
		Runtimes:       map[string]string{nitropod.RuntimeClassName: nitropod.RuntimeType},
		PodAnnotations: []string{"nitro.k8s.anjuna.io/*", "nitropod.io/*"},
		CNIConfDir:     cniConf,
	}})
	cc.sock, cc.netns = e.Ctrd.Socket, e.Ctrd.NetNSPath
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	pause, err := images.Pause(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e.importImage(t, ctx, criNS, pauseRef, pause)
	e.importImage(t, ctx, criNS, busyboxRef, busyboxImage(t, ""))

	logDir := filepath.Join(dir, "logs")
	podCfg := writeJSON(t, filepath.Join(dir, "pod.json"), map[string]any{
		"metadata":      map[string]any{"name": "nitro-pod", "namespace": "default", "uid": "nitro-pod-uid", "attempt": 0},
		"hostname":      "nitro-pod",
		"log_directory": logDir,
		"annotations": map[string]string{
			nitropod.EnclavesAnnotation: `{"app":{"cpu":2,"memoryMiB":256,"ports":[8080],"exec":[["cat","/www/index.html"]]}}`,
		},
		"linux": map[string]any{},
	})
	ctrCfg := writeJSON(t, filepath.Join(dir, "ctr.json"), map[string]any{
		"metadata": map[string]any{"name": "app"},
		"image":    map[string]any{"image": busyboxRef},
		"command":  []string{"sh", "-c", "echo hello-from-cri; mkdir -p /www; echo pong > /www/index.html; ls -la /www; exec httpd -f -v -p 8080 -h /www"},
		"log_path": "app.log",
		"linux":    map[string]any{},
	})

	pod, err := cc.run(ctx, "runp", "--runtime", nitropod.RuntimeClassName, podCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, _ = cc.run(c, "stopp", pod)
		_, _ = cc.run(c, "rmp", "-f", pod)
	})
	// The sandbox runs through runc (wrapped by the shim).
	if _, err := os.Stat(filepath.Join("/run/containerd/runc", criNS, pod)); err != nil {
		t.Errorf("pause container %s is not a runc container: %v", pod, err)
	}
	ctrID, err := cc.run(ctx, "create", pod, ctrCfg, podCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.run(ctx, "start", ctrID); err != nil {
		t.Fatal(err)
	}
	var ip string
	if out, err := cc.run(ctx, "inspectp", "-o", "go-template", "--template", "{{.status.network.ip}}", pod); err != nil {
		t.Fatal(err)
	} else {
		ip = strings.TrimSpace(out)
	}
	if net.ParseIP(ip) == nil {
		t.Fatalf("pod IP %q", ip)
	}

	// The port answers on the Pod IP (from the node's network namespace).
	var body string
	deadline := time.Now().Add(40 * time.Second)
	for {
		body, err = getInNetNS(e.Ctrd, net.JoinHostPort(ip, "8080"), "/index.html")
		if err == nil && strings.Contains(body, "pong") {
			break
		}
		state, _ := cc.run(ctx, "inspect", "-o", "go-template", "--template", "{{.status.state}}", ctrID)
		if time.Now().After(deadline) || state == "CONTAINER_EXITED" {
			logs, _ := cc.run(ctx, "logs", ctrID)
			t.Fatalf("GET %s:8080: %v (body %q); container log:\n%s", ip, err, body, logs)
		}
		time.Sleep(time.Second)
	}
	logs, err := cc.run(ctx, "logs", ctrID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs, "hello-from-cri") {
		t.Errorf("crictl logs = %q, want hello-from-cri", logs)
	}
	// One shim serves the Pod (sandbox and app container).
	if n := e.ShimProcesses(); n != 1 {
		t.Errorf("%d shim processes for one Pod, want 1", n)
	}
	// UpdateContainerResources changes the launcher limits.
	if _, err := cc.run(ctx, "update", "--cpu-quota", "50000", "--cpu-period", "100000", ctrID); err != nil {
		t.Errorf("crictl update: %v", err)
	} else {
		if q, _, err := shimtest.NodeCgroupfs().CPUQuota("/" + criNS + "/" + ctrID); err != nil || q != 50000 {
			t.Errorf("cpu quota after update = %d, %v; want 50000", q, err)
		}
	}
	// Stats must not error (CRI converts the cgroup metrics).
	if out, err := cc.run(ctx, "stats", "-o", "json", ctrID); err != nil {
		t.Errorf("crictl stats: %v", err)
	} else if !strings.Contains(out, "memory") {
		t.Errorf("crictl stats output lacks memory: %s", out)
	}
	// A production enclave runs the command measured into it (from the
	// webhook's annotation) and refuses any other with the reason.
	if out, err := cc.run(ctx, "exec", ctrID, "cat", "/www/index.html"); err != nil || strings.TrimSpace(out) != "pong" {
		t.Errorf("crictl exec of the measured command: err=%v out=%q, want pong", err, out)
	}
	if out, err := cc.run(ctx, "exec", ctrID, "true"); err == nil || !strings.Contains(out, "production enclaves run only measured commands") {
		t.Errorf("crictl exec: err=%v out=%q, want the production refusal", err, out)
	}
	// A Pod the webhook did not annotate: the image's EXPOSEd port is
	// forwarded.
	exposeImg := busyboxImageConfig(t, v1.Config{
		Cmd:          []string{"sh"},
		Env:          []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		ExposedPorts: map[string]struct{}{"8081/tcp": {}},
	})
	const exposeRef = "docker.io/library/busybox-expose:latest"
	e.importImage(t, ctx, criNS, exposeRef, exposeImg)
	pod2Cfg := writeJSON(t, filepath.Join(dir, "pod2.json"), map[string]any{
		"metadata":      map[string]any{"name": "plain-pod", "namespace": "default", "uid": "plain-pod-uid", "attempt": 0},
		"log_directory": logDir + "2",
		"linux":         map[string]any{},
	})
	ctr2Cfg := writeJSON(t, filepath.Join(dir, "ctr2.json"), map[string]any{
		"metadata": map[string]any{"name": "web"},
		"image":    map[string]any{"image": exposeRef},
		"command":  []string{"sh", "-c", "mkdir -p /www; echo exposed > /www/index.html; exec httpd -f -p 8081 -h /www"},
		"log_path": "web.log",
		"linux":    map[string]any{},
	})
	pod2, err := cc.run(ctx, "runp", "--runtime", nitropod.RuntimeClassName, pod2Cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, _ = cc.run(c, "stopp", pod2)
		_, _ = cc.run(c, "rmp", "-f", pod2)
	})
	ctr2, err := cc.run(ctx, "create", pod2, ctr2Cfg, pod2Cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.run(ctx, "start", ctr2); err != nil {
		t.Fatal(err)
	}
	ip2, err := cc.run(ctx, "inspectp", "-o", "go-template", "--template", "{{.status.network.ip}}", pod2)
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(3 * time.Minute)
	for {
		body, err = getInNetNS(e.Ctrd, net.JoinHostPort(ip2, "8081"), "/index.html")
		if err == nil && strings.Contains(body, "exposed") {
			break
		}
		state, _ := cc.run(ctx, "inspect", "-o", "go-template", "--template", "{{.status.state}}", ctr2)
		if time.Now().After(deadline) || state == "CONTAINER_EXITED" {
			logs, _ := cc.run(ctx, "logs", ctr2)
			t.Fatalf("GET %s:8081 (EXPOSEd by the image): %v (body %q); log:\n%s", ip2, err, body, logs)
		}
		time.Sleep(time.Second)
	}
	for _, args := range [][]string{{"stop", "--timeout", "5", ctr2}, {"rm", ctr2}, {"stopp", pod2}, {"rmp", pod2}} {
		if _, err := cc.run(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := cc.run(ctx, "stop", "--timeout", "5", ctrID); err != nil {
		t.Fatal(err)
	}
	if _, err := cc.run(ctx, "rm", ctrID); err != nil {
		t.Fatal(err)
	}
	if _, err := cc.run(ctx, "stopp", pod); err != nil {
		t.Fatal(err)
	}
	if _, err := cc.run(ctx, "rmp", pod); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		left := e.Leftovers()
		shims := e.ShimProcesses()
		if len(left) == 0 && shims == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("after stop/remove: %d shim processes; left: %s", shims, strings.Join(left, "\n"))
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// getInNetNS sends one HTTP GET to addr from containerd's network namespace.
// The connection is dialled on the namespace's thread itself (net/http
// would dial from another thread, outside the namespace).
func getInNetNS(c *ctrtest.Containerd, addr, path string) (string, error) {
	var conn net.Conn
	err := c.InNetNS(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 3*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.Status + ": " + string(b), err
}
