package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/kubetest"
	"github.com/nitropod/nitropod/internal/testenv"
)

const (
	itWebhookName   = "pods.nitropod.io"
	itConfigName    = "nitropod-webhook"
	itOwnNamespace  = "nitropod-system"
	itDeniedPrefix  = `admission webhook "` + itWebhookName + `" denied the request: `
	itOddCPUMessage = `container nginx-pod: limits.cpu "3" must be an even integer (vCPUs come in hyperthread pairs); use "2" or "4"`
)

// TestIntegrationKubeAPIServer registers the webhook (running in this test
// on 127.0.0.1 with a bootstrapped CA) with a real kube-apiserver through a
// MutatingWebhookConfiguration, and creates Pods through the apiserver.
func TestIntegrationKubeAPIServer(t *testing.T) {
	testenv.Integration(t)
	c := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	must(t)(c.Create(ctx, "/apis/node.k8s.io/v1/runtimeclasses", map[string]any{
		"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
		"metadata": map[string]any{"name": nitropod.RuntimeClassName}, "handler": nitropod.RuntimeClassName,
		// kube-apiserver applies these in its RuntimeClass plugin, which
		// runs before webhooks; it is run again after the webhook set
		// runtimeClassName (checked below).
		"overhead":   map[string]any{"podFixed": map[string]any{"memory": "64Mi"}},
		"scheduling": map[string]any{"nodeSelector": map[string]any{"nitropod.io/enclave-node": "true"}},
	}))
	createNamespace(t, ctx, c, itOwnNamespace)
	if err := c.EnsureServiceAccount(ctx, "kube-system"); err != nil {
		t.Fatal(err)
	}

	// The webhook's address is in the configuration before the webhook
	// starts: bind port 0 here and hand the listener to Run.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	// The shipped configuration: deploy/'s chart rendered by helm for a
	// webhook outside the cluster (webhook.url), installed in
	// itOwnNamespace. The bootstrap below replaces its caBundle.
	must(t)(c.Create(ctx, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", chartWebhookConfiguration(t, ctx, "https://"+addr+MutatePath)))

	dir := t.TempDir()
	opts := Options{
		Listener:    ln,
		TLSCertFile: filepath.Join(dir, "tls.crt"),
		TLSKeyFile:  filepath.Join(dir, "tls.key"),
		Bootstrap: &Bootstrap{
			IPs:               []net.IP{net.ParseIP("127.0.0.1")},
			CAFile:            filepath.Join(dir, "ca.crt"),
			WebhookConfigName: itConfigName,
			API:               &APIClient{Server: c.URL, Token: c.Token, CAPEM: c.PKI.CAPEM},
		},
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	opts.Ready = func(net.Addr) { close(ready) }
	go func() { done <- Run(runCtx, opts, nil) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-ctx.Done():
		t.Fatal("webhook did not start")
	}

	// The bootstrap put the CA it made into the configuration.
	var mwc struct {
		Webhooks []struct {
			ClientConfig struct {
				CABundle []byte `json:"caBundle"`
			} `json:"clientConfig"`
		} `json:"webhooks"`
	}
	if err := must(t)(c.Do(ctx, http.MethodGet, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"+itConfigName, nil)).Decode(&mwc); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(opts.Bootstrap.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(mwc.Webhooks) != 1 || string(mwc.Webhooks[0].ClientConfig.CABundle) != string(ca) {
		t.Fatalf("caBundle not patched with the bootstrapped CA")
	}

	// kube-apiserver picks up the configuration asynchronously: wait until a
	// dry-run of an odd-CPU Pod is refused by the webhook.
	odd := basePod()
	odd.Spec.Containers[0].Resources.Limits[corev1.ResourceCPU] = mustQ("3")
	for last := ""; ; time.Sleep(200 * time.Millisecond) {
		resp, err := c.Do(ctx, http.MethodPost, "/api/v1/namespaces/default/pods?dryRun=All", odd)
		if err == nil && resp.Error() != nil && strings.Contains(resp.Error().Error(), itDeniedPrefix) {
			break
		}
		if err == nil {
			last = fmt.Sprintf("%d %s", resp.Status, resp.Body)
		}
		if ctx.Err() != nil {
			t.Fatalf("webhook never called; last answer %s", last)
		}
	}

	t.Run("golden pods are stored converted", func(t *testing.T) {
		for i, tc := range goldenCases(t) {
			if tc.cfg != (Config{}) {
				continue // needs another webhook configuration
			}
			ns := "golden-" + strconv.Itoa(i)
			createNamespace(t, ctx, c, ns)
			tc.pod.Namespace = ns
			want, wantWarnings, err := Convert(tc.pod, Config{})
			if err != nil {
				t.Fatal(err)
			}
			resp := must(t)(c.Create(ctx, "/api/v1/namespaces/"+ns+"/pods", tc.pod))
			var stored corev1.Pod
			if err := resp.Decode(&stored); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(wantWarnings, resp.Warnings); diff != "" {
				t.Errorf("%s: warnings reaching the client (-want +got):\n%s", tc.name, diff)
			}
			// The webhook sees the Pod after the ServiceAccount admission
			// plugin added the token volume: Convert's output for that Pod
			// (the token's mount is a delivered volume) is what is stored.
			if sa := withTokenVolume(tc.pod, &stored); sa != nil {
				if want, _, err = Convert(sa, Config{}); err != nil {
					t.Fatal(err)
				}
			}
			compareStored(t, tc.name, want, &stored)
			if got := stored.Spec.Overhead.Memory().String(); got != "64Mi" || stored.Spec.NodeSelector["nitropod.io/enclave-node"] != "true" {
				t.Errorf("%s: RuntimeClass overhead (%s) or scheduling (%v) not applied", tc.name, got, stored.Spec.NodeSelector)
			}
			again, _, err := Convert(&stored, Config{})
			if err != nil {
				t.Fatalf("%s: Convert of the stored Pod: %v", tc.name, err)
			}
			if diff := cmp.Diff(podJSON(t, &stored), podJSON(t, again)); diff != "" {
				t.Errorf("%s: Convert changes the stored Pod (not idempotent):\n%s", tc.name, diff)
			}
		}
	})

	t.Run("odd cpu refused by kubectl", func(t *testing.T) {
		b, _ := yaml.Marshal(odd)
		_, stderr, err := c.Kubectl(t, ctx, b, "create", "-f", "-")
		if err == nil {
			t.Fatal("kubectl create succeeded")
		}
		if !strings.Contains(stderr, itDeniedPrefix+itOddCPUMessage) {
			t.Errorf("kubectl stderr lacks the denial:\n%s", stderr)
		}
		resp := must(t)(c.Do(ctx, http.MethodGet, "/api/v1/namespaces/default/pods/nginx-pod", nil))
		if resp.Status != http.StatusNotFound {
			t.Errorf("refused Pod exists: %d", resp.Status)
		}
	})

	t.Run("warnings reach kubectl", func(t *testing.T) {
		pod := readPod(t, filepath.Join("testdata", "golden", "image-location.in.yaml"))
		pod.Name = "kubectl-warning"
		b, _ := yaml.Marshal(pod)
		_, stderr, err := c.Kubectl(t, ctx, b, "create", "-f", "-")
		if err != nil {
			t.Fatalf("kubectl create: %v\n%s", err, stderr)
		}
		want := `Warning: the enclave boots s3://your-eif-bucket/your-eif-file (annotation nitro.k8s.anjuna.io/imageLocation); the image "nginx:latest" of container secure-eif-pod is ignored`
		if !strings.Contains(stderr, want) {
			t.Errorf("kubectl stderr lacks %q:\n%s", want, stderr)
		}
	})

	t.Run("unlabelled pod untouched", func(t *testing.T) {
		pod := basePod()
		pod.Name, pod.Labels = "plain", map[string]string{"app": "plain"}
		pod.Spec.Containers[0].Resources.Limits[corev1.ResourceCPU] = mustQ("3")
		resp := must(t)(c.Create(ctx, "/api/v1/namespaces/default/pods", pod))
		var stored corev1.Pod
		if err := resp.Decode(&stored); err != nil {
			t.Fatal(err)
		}
		if stored.Spec.RuntimeClassName != nil || stored.Annotations[nitropod.EnclavesAnnotation] != "" || len(resp.Warnings) != 0 {
			t.Errorf("unlabelled Pod was changed: runtimeClassName %v, annotations %v, warnings %q", stored.Spec.RuntimeClassName, stored.Annotations, resp.Warnings)
		}
		if got := stored.Spec.Containers[0].Resources.Limits.Cpu().String(); got != "3" {
			t.Errorf("limits.cpu = %s, want 3", got)
		}
		if got := stored.Spec.Containers[0].VolumeMounts[0].MountPath; got != "/opt/anjuna" {
			t.Errorf("licence mountPath = %s, want the user's /opt/anjuna", got)
		}
	})

	// The chart's namespaceSelector: the webhook's own namespace and
	// kube-system never reach it (a managed Pod there is stored as written,
	// even one the webhook would refuse).
	for _, ns := range []string{itOwnNamespace, "kube-system"} {
		t.Run(ns+" excluded", func(t *testing.T) {
			resp := must(t)(c.Create(ctx, "/api/v1/namespaces/"+ns+"/pods", odd))
			var stored corev1.Pod
			if err := resp.Decode(&stored); err != nil {
				t.Fatal(err)
			}
			if stored.Spec.RuntimeClassName != nil || stored.Annotations[nitropod.EnclavesAnnotation] != "" {
				t.Errorf("Pod in %s was converted", ns)
			}
		})
	}
}

// must(t)(c.Do(…)) fails the test on a transport or status error.
func must(t *testing.T) func(*kubetest.Response, error) *kubetest.Response {
	return func(resp *kubetest.Response, err error) *kubetest.Response {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
}

func createNamespace(t *testing.T, ctx context.Context, c *kubetest.Cluster, name string) {
	t.Helper()
	if _, err := c.Create(ctx, "/api/v1/namespaces", map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name},
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureServiceAccount(ctx, name); err != nil {
		t.Fatal(err)
	}
}

// chartWebhookConfiguration renders deploy/'s Helm chart with helm (as
// released: namespace itOwnNamespace, the webhook at url) and returns its
// MutatingWebhookConfiguration, checking that it is the one these tests
// expect by name.
func chartWebhookConfiguration(t *testing.T, ctx context.Context, url string) map[string]any {
	t.Helper()
	chart := filepath.Join(testenv.RepoRoot(), "deploy", "helm", "nitropod")
	out, err := exec.CommandContext(ctx, testenv.Binary(t, "helm"), "template", "nitropod", chart,
		"--namespace", itOwnNamespace, "--set", "webhook.url="+url,
		// (The node installer's licence settings are not this test's.)
		"--set", "nodeInstaller.enabled=false",
		"--show-only", "templates/webhook.yaml").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("helm template: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("helm template: %v", err)
	}
	var found []map[string]any
	for _, doc := range strings.Split(string(out), "\n---") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("helm template output: %v\n%s", err, doc)
		}
		if obj["kind"] == "MutatingWebhookConfiguration" {
			found = append(found, obj)
		}
	}
	if len(found) != 1 {
		t.Fatalf("the chart renders %d MutatingWebhookConfigurations; want 1:\n%s", len(found), out)
	}
	mwc := found[0]
	meta, _ := mwc["metadata"].(map[string]any)
	whs, _ := mwc["webhooks"].([]any)
	if meta["name"] != itConfigName || len(whs) != 1 {
		t.Fatalf("the chart's MutatingWebhookConfiguration is %v with %d webhooks; want %s with one", meta["name"], len(whs), itConfigName)
	}
	if wh, _ := whs[0].(map[string]any); wh["name"] != itWebhookName {
		t.Fatalf("the chart's webhook is named %v; want %s", wh["name"], itWebhookName)
	}
	return mwc
}

// compareStored checks what the webhook owns in a stored Pod against
// Convert's output; the apiserver adds defaults and the service-account
// token volume, which are not the webhook's.
// withTokenVolume returns pod with the service-account token volume and
// mounts that the apiserver added to stored (nil if it added none).
func withTokenVolume(pod, stored *corev1.Pod) *corev1.Pod {
	const prefix = "kube-api-access-"
	var vol *corev1.Volume
	for i := range stored.Spec.Volumes {
		if strings.HasPrefix(stored.Spec.Volumes[i].Name, prefix) {
			vol = &stored.Spec.Volumes[i]
		}
	}
	if vol == nil {
		return nil
	}
	p := pod.DeepCopy()
	p.Spec.Volumes = append(p.Spec.Volumes, *vol)
	for i := range p.Spec.Containers {
		if i >= len(stored.Spec.Containers) {
			break
		}
		for _, m := range stored.Spec.Containers[i].VolumeMounts {
			if m.Name == vol.Name {
				p.Spec.Containers[i].VolumeMounts = append(p.Spec.Containers[i].VolumeMounts, m)
			}
		}
	}
	return p
}

func compareStored(t *testing.T, name string, want, got *corev1.Pod) {
	t.Helper()
	type owned struct {
		RuntimeClassName *string
		Annotations      map[string]string
		Resources        []corev1.ResourceRequirements
		Mounts           [][]corev1.VolumeMount
	}
	pick := func(p *corev1.Pod) string {
		o := owned{RuntimeClassName: p.Spec.RuntimeClassName, Annotations: p.Annotations}
		for _, ctr := range p.Spec.Containers {
			o.Resources = append(o.Resources, ctr.Resources)
			var mounts []corev1.VolumeMount
			for _, m := range ctr.VolumeMounts {
				if !strings.HasPrefix(m.Name, "kube-api-access-") {
					mounts = append(mounts, m)
				}
			}
			o.Mounts = append(o.Mounts, mounts)
		}
		b, err := json.MarshalIndent(o, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if diff := cmp.Diff(pick(want), pick(got)); diff != "" {
		t.Errorf("%s: stored Pod differs from Convert's output (-want +got):\n%s", name, diff)
	}
}
