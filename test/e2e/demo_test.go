//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/cluster"
)

// demoWorkload is what a user would try first: a ConfigMap and a Secret
// read by a Deployment of two enclave replicas (busybox's httpd serving a
// page made from them), a Service in front of it, and a plain Job. The
// demo's FAKE pool of two cores holds the two enclaves of 2 vCPUs.
const demoWorkload = `apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {message: hello-from-a-configmap}
---
apiVersion: v1
kind: Secret
metadata: {name: web-secret}
stringData: {word: and-a-secret}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web, nitro.k8s.anjuna.io/managed: "yes"}
    spec:
      containers:
      - name: httpd
        image: busybox:latest
        command: [sh, -c, 'mkdir -p /www && echo "$MESSAGE $WORD" > /www/index.html && exec httpd -f -p 8080 -h /www']
        env:
        - name: MESSAGE
          valueFrom: {configMapKeyRef: {name: web-config, key: message}}
        - name: WORD
          valueFrom: {secretKeyRef: {name: web-secret, key: word}}
        ports: [{containerPort: 8080}]
        resources:
          limits: {cpu: "2", memory: 256Mi}
      volumes:
      - name: anjuna-license
        secret: {secretName: anjuna-license}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: once
        image: busybox:latest
        command: [sh, -c, 'echo the job ran']
`

// TestDemo runs `make demo`'s program (test/demo) with a multi-document
// file: it must end with both enclave replicas Ready, show their progress,
// serve the page through the forwarded port (to a Pod of the Service),
// and print a kubeconfig at a stable path that a second process can use.
func TestDemo(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	testenv.EmuBlobs(t)
	for _, b := range []string{"etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubelet", "kubectl",
		"crictl", "registry", "containerd", "helm", "nitropod", "nitropod-webhook", "nitropod-device-plugin",
		"nitropod-init", "nitropod-launcher", "containerd-shim-nitro-v1", "qemu-system-x86_64"} {
		testenv.Binary(t, b)
	}
	tmp := t.TempDir()
	demo := filepath.Join(tmp, "demo")
	build := exec.Command("go", "build", "-o", demo, "./test/demo")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building test/demo: %v\n%s", err, out)
	}
	file := filepath.Join(tmp, "workload.yaml")
	if err := os.WriteFile(file, []byte(demoWorkload), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, demo, "-f", file, "-port", fmt.Sprint(port), "-timeout", "15m")
	cmd.Dir = testenv.RepoRoot()
	cmd.Env = append(os.Environ(), "NITROPOD_OUTPUT="+testenv.OutputDir())
	cmd.Stderr = os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 3 * time.Minute
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		lines []string
	)
	ready := make(chan struct{})
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		closed := false
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
			t.Log(sc.Text())
			if !closed && strings.HasPrefix(sc.Text(), "Press Ctrl-C") {
				close(ready)
				closed = true
			}
		}
		exited <- cmd.Wait()
	}()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			return err
		case <-time.After(4 * time.Minute):
			_ = cmd.Process.Kill()
			return fmt.Errorf("the demo did not stop within 4 minutes of Ctrl-C")
		}
	}
	defer func() { _ = stop() }()
	start := time.Now()
	select {
	case <-ready:
	case err := <-exited:
		stopped = true
		t.Fatalf("the demo exited before it was ready: %v", err)
	case <-ctx.Done():
		t.Fatal("the demo was not ready in time")
	}
	t.Logf("demo ready %.0fs after start", time.Since(start).Seconds())
	mu.Lock()
	out := strings.Join(lines, "\n")
	mu.Unlock()

	// Progress: each replica was shown booting, then Ready.
	for _, want := range []string{"booting the enclave", "Ready (the app has started in its enclave)"} {
		if strings.Count(out, want) < 2 {
			t.Errorf("the demo's output shows %q %d times, want once per replica:\n%s", want, strings.Count(out, want), out)
		}
	}

	// The kubeconfig is at its stable path, and works from another process.
	kubeconfig := filepath.Join(testenv.OutputDir(), "demo", "kubeconfig")
	if !strings.Contains(out, "export KUBECONFIG="+kubeconfig+"\n") {
		t.Fatalf("the demo does not print export KUBECONFIG=%s:\n%s", kubeconfig, out)
	}
	kubectl := exec.Command(testenv.Binary(t, "kubectl"), "get", "deployment", "web", "-o", "jsonpath={.status.readyReplicas}")
	kubectl.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	if got, err := kubectl.Output(); err != nil || string(got) != "2" {
		t.Fatalf("kubectl with KUBECONFIG=%s: deployment web ready replicas %q, %v", kubeconfig, got, err)
	}
	kubectl = exec.Command(testenv.Binary(t, "kubectl"), "get", "job", "once", "-o", "jsonpath={.status.succeeded}")
	kubectl.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	if got, err := kubectl.Output(); err != nil || string(got) != "1" {
		t.Errorf("job once succeeded %q, %v", got, err)
	}

	// The page, through the forwarded port, from both replicas' content.
	client := &http.Client{Timeout: 10 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	for i := 0; i < 4; i++ {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "hello-from-a-configmap and-a-secret" {
			t.Fatalf("GET %s = %s %q, want the ConfigMap's and Secret's words", url, resp.Status, body)
		}
	}

	if err := stop(); err != nil {
		t.Fatalf("the demo's exit after Ctrl-C: %v", err)
	}
	if _, err := os.Stat(kubeconfig); !os.IsNotExist(err) {
		t.Errorf("the demo left its kubeconfig %s behind (%v)", kubeconfig, err)
	}
	// The machine lock is free again: no cluster left running.
	f, err := os.OpenFile(cluster.MachineLock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Errorf("the test cluster lock is still held after the demo stopped: %v", err)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
