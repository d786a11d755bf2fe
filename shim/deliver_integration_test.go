package shim_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

// kubeletVolume lays out dir as kubelet's atomic writer does (content in a
// timestamped directory, ..data naming it, top-level names linking through
// it); called again, it swaps in new content the way kubelet updates it.
func kubeletVolume(t testing.TB, dir string, gen int, files map[string]string) {
	t.Helper()
	ts := fmt.Sprintf("..2026_11_30_05_00_00.%d", gen)
	for name, body := range files {
		p := filepath.Join(dir, ts, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		_ = os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name))
	}
}

// deliveryPod runs a Pod through CRI as kubelet would after the webhook:
// the enclaves and delivery annotations of a template with env MODE
// (literal), DB_PASSWORD (a secretKeyRef) and a ConfigMap volume at
// /etc/app, plus whatever env kubelet adds for this replica.
func deliveryPod(t *testing.T, ctx context.Context, c *criEnv, name string, d contract.ContainerDelivery, env map[string]string, command string) (ctrID, volume string) {
	t.Helper()
	uid := name + "-uid"
	volume = filepath.Join(c.dir, "kubelet", "pods", uid, "volumes", "kubernetes.io~configmap", "cfg")
	if err := os.MkdirAll(volume, 0o755); err != nil {
		t.Fatal(err)
	}
	kubeletVolume(t, volume, 1, map[string]string{"app.conf": "version-one"})
	scratch := filepath.Join(c.dir, "kubelet", "pods", uid, "volumes", "kubernetes.io~empty-dir", "scratch")
	subFile := filepath.Join(c.dir, "kubelet", "pods", uid, "volume-subpaths", "cfg", "app", "1")
	if err := os.MkdirAll(scratch, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(subFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(subFile, []byte("sub-path-file"), 0o644); err != nil {
		t.Fatal(err)
	}
	podCfg := writeJSON(t, filepath.Join(c.dir, name+"-pod.json"), map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": uid, "attempt": 0},
		"hostname":      name,
		"log_directory": filepath.Join(c.dir, name+"-logs"),
		"annotations": map[string]string{
			nitropod.EnclavesAnnotation: `{"app":{"cpu":2,"memoryMiB":256}}`,
			nitropod.DeliveryAnnotation: contract.MarshalDelivery(map[string]contract.ContainerDelivery{"app": d}),
		},
		"linux": map[string]any{},
	})
	pod, err := c.cc.run(ctx, "runp", "--runtime", nitropod.RuntimeClassName, podCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, _ = c.cc.run(cc, "stopp", pod)
		_, _ = c.cc.run(cc, "rmp", "-f", pod)
	})
	var envs []map[string]string
	for k, v := range env {
		envs = append(envs, map[string]string{"key": k, "value": v})
	}
	ctrCfg := writeJSON(t, filepath.Join(c.dir, name+"-ctr.json"), map[string]any{
		"metadata": map[string]any{"name": "app"},
		"image":    map[string]any{"image": busyboxRef},
		"command":  []string{"sh", "-c", command},
		"envs":     envs,
		"mounts": []map[string]any{
			{"container_path": "/etc/app", "host_path": volume, "readonly": true},
			{"container_path": "/scratch", "host_path": scratch},
			{"container_path": "/etc/one.conf", "host_path": subFile, "readonly": true},
		},
		"log_path": "app.log",
		"linux":    map[string]any{},
	})
	id, err := c.cc.run(ctx, "create", pod, ctrCfg, podCfg)
	if err != nil {
		t.Fatal(err)
	}
	return id, volume
}

func waitLog(t *testing.T, ctx context.Context, c *criEnv, id, want string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		logs, _ := c.cc.run(ctx, "logs", id)
		if strings.Contains(logs, want) {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("container %s: %q not in its log after %v; log:\n%s", id, want, timeout, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestCRIDeliveredConfiguration: two replicas of one Pod template that
// differ in hostname, Secret value and kubelet-injected env measure the
// same (the second is an EIF cache hit); each sees its own delivered
// hostname, env and ConfigMap-like volume; a kubelet-style update of the
// volume reaches the running enclave within 10 s; and a delivered name the
// EIF does not allow (LD_PRELOAD) makes the start fail with the reason.
func TestCRIDeliveredConfiguration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := newCRIEnv(t, ctx)
	d := contract.ContainerDelivery{
		Literal: []string{"MODE"}, Env: []string{"DB_PASSWORD"},
		Mounts: []contract.Mount{
			{Path: "/etc/app", Kind: contract.VolumeConfigMap, Volume: "cfg", ReadOnly: true},
			{Path: "/scratch", Kind: contract.VolumeEmptyDir, Volume: "scratch", SizeLimit: 1 << 20},
			{Path: "/etc/one.conf", Kind: contract.VolumeConfigMap, Volume: "cfg", SubPath: true, ReadOnly: true},
		},
	}
	const app = `echo "host=$(hostname) pw=$DB_PASSWORD mode=$MODE svc=$KUBERNETES_SERVICE_HOST"; echo "hosts: $(grep -c . /etc/hosts) lines"; ` +
		`if touch /etc/app/x 2>/dev/null; then echo volume-writable; fi; ` +
		`echo "subpath=$(cat /etc/one.conf)"; echo x > /scratch/f && echo scratch-ok; ` +
		`dd if=/dev/zero of=/scratch/big bs=1024 count=2048 2>/dev/null || echo scratch-full; ` +
		`while true; do echo "conf=$(cat /etc/app/app.conf)"; sleep 0.3; done`

	one, vol := deliveryPod(t, ctx, c, "replica-one", d, map[string]string{"MODE": "prod", "DB_PASSWORD": "alpha-secret", "KUBERNETES_SERVICE_HOST": "10.96.0.1"}, app)
	if _, err := c.cc.run(ctx, "start", one); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(c.Ctrd.State, "io.containerd.runtime.v2.task", criNS, one, "config.json")); err == nil {
		t.Logf("config.json of replica one: %s", b)
	}
	waitLog(t, ctx, c, one, "host=replica-one pw=alpha-secret mode=prod svc=10.96.0.1", time.Minute)
	waitLog(t, ctx, c, one, "conf=version-one", 10*time.Second)
	// A subPath file, and an emptyDir as a tmpfs of its sizeLimit.
	for _, want := range []string{"subpath=sub-path-file", "scratch-ok", "scratch-full"} {
		waitLog(t, ctx, c, one, want, 5*time.Second)
	}

	two, _ := deliveryPod(t, ctx, c, "replica-two", d, map[string]string{"MODE": "prod", "DB_PASSWORD": "beta-secret", "REDIS_SERVICE_HOST": "10.96.0.9", "REDIS_PORT": "tcp://10.96.0.9:6379"}, app)
	if _, err := c.cc.run(ctx, "start", two); err != nil {
		t.Fatal(err)
	}
	waitLog(t, ctx, c, two, "host=replica-two pw=beta-secret mode=prod svc=", time.Minute)
	if hit, build, _ := c.createInfo(t, two); !hit || build {
		t.Errorf("second replica: cache hit %v, built %v; want the first replica's EIF (same measurement)", hit, build)
	}
	if logs, _ := c.cc.run(ctx, "logs", one); strings.Contains(logs, "volume-writable") {
		t.Error("a read-only ConfigMap volume is writable inside the enclave")
	}

	// kubelet updates the ConfigMap volume of replica one.
	kubeletVolume(t, vol, 2, map[string]string{"app.conf": "version-two"})
	took := waitLog(t, ctx, c, one, "conf=version-two", 10*time.Second)
	t.Logf("volume update visible in the enclave after %v", took.Round(time.Millisecond))

	// Production refusal: the template's envFrom without a prefix lets
	// any name be delivered, but never LD_PRELOAD.
	bad := d
	bad.EnvFrom = []string{""}
	three, _ := deliveryPod(t, ctx, c, "replica-bad", bad, map[string]string{"MODE": "prod", "LD_PRELOAD": "/lib/evil.so"}, app)
	out, err := c.cc.run(ctx, "start", three)
	if err == nil {
		t.Fatalf("start with a delivered LD_PRELOAD succeeded: %s", out)
	}
	if !strings.Contains(out, "LD_PRELOAD") || !strings.Contains(out, "refused the delivered configuration") {
		t.Errorf("start error %q does not give the reason", out)
	}
	if reason := c.inspect(ctx, three, "{{.status.message}}"); !strings.Contains(reason, "LD_PRELOAD") {
		t.Errorf("container status message %q does not name LD_PRELOAD (what kubectl describe shows)", reason)
	}
}
