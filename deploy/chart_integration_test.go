package deploy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/internal/kubetest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/webhook"
)

const releaseNS = "nitropod-system"

// chartCluster is a real etcd + kube-apiserver and helm pointed at it.
type chartCluster struct {
	*kubetest.Cluster
	helm string
	env  []string
}

func startChartCluster(t *testing.T) *chartCluster {
	t.Helper()
	testenv.Integration(t)
	helm := testenv.Binary(t, "helm")
	c := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Create(ctx, "/api/v1/namespaces", map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": releaseNS}}); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	env := append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "cache"), "HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"), "KUBECONFIG="+c.Kubeconfig)
	return &chartCluster{Cluster: c, helm: helm, env: env}
}

// helmRun runs helm install or upgrade of the chart as release nitropod.
func (c *chartCluster) helmRun(t *testing.T, verb string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{verb, "nitropod", filepath.Join(repoDeploy(t), "helm", "nitropod"), "--namespace", releaseNS}, args...)
	cmd := exec.CommandContext(ctx, c.helm, full...)
	cmd.Env = c.env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(full, " "), err, out)
	}
}

func (c *chartCluster) get(t *testing.T, path string, out any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Do(ctx, http.MethodGet, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.Error(); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if err := resp.Decode(out); err != nil {
		t.Fatal(err)
	}
}

type tlsSecret struct {
	Data map[string][]byte `json:"data"`
}

type mwcObject struct {
	Webhooks []struct {
		ClientConfig struct {
			CABundle []byte `json:"caBundle"`
		} `json:"clientConfig"`
	} `json:"webhooks"`
}

const (
	secretPath = "/api/v1/namespaces/" + releaseNS + "/secrets/nitropod-webhook-tls"
	mwcPath    = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/nitropod-webhook"
)

func (c *chartCluster) certs(t *testing.T) (tlsSecret, []byte) {
	t.Helper()
	var s tlsSecret
	c.get(t, secretPath, &s)
	var m mwcObject
	c.get(t, mwcPath, &m)
	if len(m.Webhooks) != 1 {
		t.Fatalf("webhook configuration has %d webhooks, want 1", len(m.Webhooks))
	}
	return s, m.Webhooks[0].ClientConfig.CABundle
}

// TestChartUpgradeKeepsWebhookCA installs the chart into a real
// kube-apiserver with Helm-made certificates and upgrades it: the upgrade
// must reuse the Secret (lookup), so the caBundle a running webhook is
// trusted with does not change; only new certificate names make a new pair.
func TestChartUpgradeKeepsWebhookCA(t *testing.T) {
	c := startChartCluster(t)
	c.helmRun(t, "install", "--set", "license.enforce=false")
	s1, bundle1 := c.certs(t)
	if len(s1.Data["tls.key"]) == 0 || !bytes.Equal(bundle1, s1.Data["ca.crt"]) {
		t.Fatalf("after install: caBundle (%d bytes) is not the Secret's ca.crt (%d bytes), or no key", len(bundle1), len(s1.Data["ca.crt"]))
	}

	c.helmRun(t, "upgrade", "--set", "license.enforce=false", "--set", "webhook.timeoutSeconds=7")
	s2, bundle2 := c.certs(t)
	for _, k := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if !bytes.Equal(s1.Data[k], s2.Data[k]) {
			t.Errorf("helm upgrade changed %s of the webhook's TLS Secret: the running webhook's CA would no longer match the caBundle", k)
		}
	}
	if !bytes.Equal(bundle1, bundle2) {
		t.Error("helm upgrade changed the caBundle")
	}

	// Other names (the webhook moved to a URL): a new pair that covers them.
	c.helmRun(t, "upgrade", "--set", "license.enforce=false", "--set", "webhook.url=https://webhook.example.internal:8443/mutate-pods")
	s3, bundle3 := c.certs(t)
	if bytes.Equal(s3.Data["ca.crt"], s1.Data["ca.crt"]) || !bytes.Equal(bundle3, s3.Data["ca.crt"]) {
		t.Error("after changing webhook.url: want a new CA in the Secret and the caBundle")
	}
	blk, _ := pem.Decode(s3.Data["tls.crt"])
	if blk == nil {
		t.Fatal("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.VerifyHostname("webhook.example.internal"); err != nil {
		t.Errorf("the new certificate does not cover the webhook.url host: %v", err)
	}
}

// TestChartBootstrapRBAC installs the chart with webhook-made certificates
// and acts as the webhook's ServiceAccount: it may patch the caBundle of its
// own MutatingWebhookConfiguration (what webhook.Bootstrap does) and nothing
// else.
func TestChartBootstrapRBAC(t *testing.T) {
	c := startChartCluster(t)
	c.helmRun(t, "install", "--set", "license.enforce=false", "--set", "webhook.certificates=bootstrap", "--set", "webhook.replicas=1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	resp, err := c.Create(ctx, "/api/v1/namespaces/"+releaseNS+"/serviceaccounts/nitropod-webhook/token",
		map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": map[string]any{"expirationSeconds": 600}})
	if err != nil {
		t.Fatalf("token for the webhook's ServiceAccount: %v", err)
	}
	var tr struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	if err := resp.Decode(&tr); err != nil || tr.Status.Token == "" {
		t.Fatalf("token request: %v %s", err, resp.Body)
	}
	asWebhook := &webhook.APIClient{Server: c.URL, Token: tr.Status.Token, CAPEM: c.PKI.CAPEM}

	ca := selfSignedPEM(t)
	n, err := asWebhook.PatchCABundle(ctx, "nitropod-webhook", ca)
	if err != nil || n != 1 {
		t.Fatalf("the webhook patching its own caBundle: n=%d err=%v", n, err)
	}
	var m mwcObject
	c.get(t, mwcPath, &m)
	if !bytes.Equal(m.Webhooks[0].ClientConfig.CABundle, ca) {
		t.Error("caBundle is not what the webhook patched in")
	}

	// Another webhook configuration is out of reach.
	other := map[string]any{
		"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
		"metadata": map[string]any{"name": "someone-else"},
		"webhooks": []any{map[string]any{
			"name": "x.example.com", "admissionReviewVersions": []string{"v1"}, "sideEffects": "None",
			"clientConfig": map[string]any{"url": "https://x.example.com/"},
		}},
	}
	if _, err := c.Create(ctx, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", other); err != nil {
		t.Fatal(err)
	}
	if _, err := asWebhook.PatchCABundle(ctx, "someone-else", ca); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("the webhook patching another configuration: err = %v, want 403 Forbidden", err)
	}
	// Nor may it read Secrets.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/api/v1/namespaces/"+releaseNS+"/secrets", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tr.Status.Token)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.PKI.CAPEM)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig(pool)}}
	defer hc.CloseIdleConnections()
	r, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusForbidden {
		t.Errorf("the webhook listing Secrets: %s, want 403", r.Status)
	}
}

func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(fmt.Errorf("making a CA: %w", err))
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func tlsConfig(pool *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// TestRenderedManifestsApply applies deploy/manifests/nitropod.yaml to a
// real kube-apiserver (as `kubectl apply -f` users do): every object is
// valid and stored, and the ones that make the install key-free are there.
func TestRenderedManifestsApply(t *testing.T) {
	c := startChartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, stderr, err := c.Kubectl(t, ctx, nil, "apply", "-f", filepath.Join(repoDeploy(t), "manifests", "nitropod.yaml"))
	if err != nil {
		t.Fatalf("kubectl apply: %v\n%s\n%s", err, out, stderr)
	}
	for _, want := range []string{"namespace/nitropod-system", "deployment.apps/nitropod-webhook", "daemonset.apps/nitropod-device-plugin",
		"daemonset.apps/nitropod-node-installer", "runtimeclass.node.k8s.io/nitro", "mutatingwebhookconfiguration.admissionregistration.k8s.io/nitropod-webhook",
		"clusterrole.rbac.authorization.k8s.io/nitropod-webhook-cabundle", "clusterrolebinding.rbac.authorization.k8s.io/nitropod-webhook-cabundle"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl apply output lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "secret/") {
		t.Errorf("the rendered manifests create a Secret:\n%s", out)
	}
	// Applying again changes nothing.
	out, stderr, err = c.Kubectl(t, ctx, nil, "apply", "-f", filepath.Join(repoDeploy(t), "manifests", "nitropod.yaml"))
	if err != nil {
		t.Fatalf("second kubectl apply: %v\n%s\n%s", err, out, stderr)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasSuffix(line, " unchanged") {
			t.Errorf("second kubectl apply changed something: %s", line)
		}
	}
}
