// Package deploy holds the tests of the Helm chart (helm/nitropod), of the
// rendered manifests (manifests/nitropod.yaml, made by render.sh) and of
// the node installer's script. It has no non-test code.
package deploy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/shim"
)

// privateKeyPEM matches the first line of any PEM private key ("PRIVATE
// KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "OPENSSH PRIVATE KEY", …).
// Written with repetition counts so that this file does not match itself.
var privateKeyPEM = regexp.MustCompile(`-{5}BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-{5}`)

// base64Run is a run of base64 long enough to hold a PEM header; Secret
// data and caBundles are base64, so a key can hide in one.
var base64Run = regexp.MustCompile(`[A-Za-z0-9+/]{40,}={0,2}`)

// findPrivateKeys returns where in data a PEM private key appears, in the
// clear or base64-encoded (once or twice).
func findPrivateKeys(data []byte) []string {
	var found []string
	var scan func(b []byte, depth int, where string)
	scan = func(b []byte, depth int, where string) {
		for _, loc := range privateKeyPEM.FindAllIndex(b, -1) {
			found = append(found, fmt.Sprintf("%sPEM private key header at byte %d", where, loc[0]))
		}
		if depth == 2 {
			return
		}
		for _, loc := range base64Run.FindAllIndex(b, -1) {
			run := b[loc[0]:loc[1]]
			// A run cut out of longer text may start at any of the four
			// positions of a base64 quantum.
			for shift := 0; shift < 4 && shift < len(run); shift++ {
				r := run[shift:]
				r = r[:len(r)/4*4]
				dec := make([]byte, base64.StdEncoding.DecodedLen(len(r)))
				n, err := base64.StdEncoding.Decode(dec, r)
				if err != nil && n == 0 {
					continue
				}
				scan(dec[:n], depth+1, fmt.Sprintf("%sin the base64 at byte %d: ", where, loc[0]+shift))
			}
		}
	}
	scan(data, 0, "")
	return found
}

func repoDeploy(t *testing.T) string {
	t.Helper()
	return filepath.Join(testenv.RepoRoot(), "deploy")
}

// TestNoPrivateKeyInDeploy fails when any file under deploy/ holds a PEM
// private key, in the clear or base64 (as in a Secret's data): keys are
// made at install time, never committed.
func TestNoPrivateKeyInDeploy(t *testing.T) {
	root := repoDeploy(t)
	files := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		rel, _ := filepath.Rel(testenv.RepoRoot(), p)
		for _, where := range findPrivateKeys(b) {
			t.Errorf("%s holds a private key (%s): never commit keys; let the chart, the webhook or cert-manager make them at install time", rel, where)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 5 {
		t.Fatalf("scanned only %d files under %s", files, root)
	}
}

// TestFindPrivateKeys checks the detector itself on keys made here, in the
// forms a key takes in a manifest.
func TestFindPrivateKeys(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("not really a key but a PEM block")})
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	b64 := base64.StdEncoding.EncodeToString
	for _, tc := range []struct {
		name string
		data string
		want bool
	}{
		{"clear PEM", "tls.key: |\n" + indent(string(keyPEM)), true},
		{"EC PEM", string(ecPEM), true},
		{"Secret data (base64)", "data:\n  tls.key: " + b64(keyPEM) + "\n", true},
		{"base64 inside a longer run", "x: abc" + b64(append([]byte("ab"), keyPEM...)) + "\n", true},
		{"base64 of base64", "v: " + b64([]byte(b64(keyPEM))) + "\n", true},
		{"public key", string(pubPEM) + b64(pubPEM), false},
		{"words only", "fail: license.publicKeys holds a PRIVATE KEY\n", false},
	} {
		if got := len(findPrivateKeys([]byte(tc.data))) > 0; got != tc.want {
			t.Errorf("%s: found a private key = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ") + "\n"
}

// TestRenderedManifestsUpToDate fails when deploy/manifests/nitropod.yaml is
// not exactly what deploy/render.sh makes from the chart now.
func TestRenderedManifestsUpToDate(t *testing.T) {
	helm := testenv.Binary(t, "helm")
	out := filepath.Join(t.TempDir(), "nitropod.yaml")
	cmd := exec.Command(filepath.Join(repoDeploy(t), "render.sh"))
	cmd.Env = append(os.Environ(), "HELM="+helm, "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("deploy/render.sh: %v\n%s", err, b)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile(filepath.Join(repoDeploy(t), "manifests", "nitropod.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, want) {
		t.Errorf("deploy/manifests/nitropod.yaml is not what deploy/render.sh renders from the chart (first difference at line %d): run deploy/render.sh and commit the result", firstDiffLine(have, want))
	}
	if keys := findPrivateKeys(want); len(keys) > 0 {
		t.Errorf("deploy/render.sh renders a private key (%v)", keys)
	}
}

func firstDiffLine(a, b []byte) int {
	la, lb := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := 0; i < len(la) && i < len(lb); i++ {
		if la[i] != lb[i] {
			return i + 1
		}
	}
	return min(len(la), len(lb)) + 1
}

// docSeparator splits a YAML stream into documents (keeping the line break
// that ends a block scalar before the separator).
var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// rendered is the output of helm template, split into objects.
type rendered struct {
	raw  string
	objs []map[string]any
}

func helmTemplate(t *testing.T, args ...string) (*rendered, error) {
	t.Helper()
	helm := testenv.Binary(t, "helm")
	full := append([]string{"template", "nitropod", filepath.Join(repoDeploy(t), "helm", "nitropod"), "--namespace", "nitropod-system"}, args...)
	cmd := exec.Command(helm, full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm %s: %w: %s", strings.Join(full, " "), err, stderr.String())
	}
	r := &rendered{raw: string(out)}
	for _, doc := range docSeparator.Split(string(out), -1) {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, fmt.Errorf("parsing rendered object: %w\n%s", err, doc)
		}
		if len(obj) > 0 {
			r.objs = append(r.objs, obj)
		}
	}
	return r, nil
}

func mustTemplate(t *testing.T, args ...string) *rendered {
	t.Helper()
	r, err := helmTemplate(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// get decodes the object of kind and name into out; false if absent.
func (r *rendered) get(t *testing.T, kind, name string, out any) bool {
	t.Helper()
	for _, o := range r.objs {
		md, _ := o["metadata"].(map[string]any)
		if o["kind"] == kind && md["name"] == name {
			b, err := yaml.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal(b, out); err != nil {
				t.Fatalf("decoding %s/%s: %v", kind, name, err)
			}
			return true
		}
	}
	return false
}

func (r *rendered) kinds() map[string]int {
	m := map[string]int{}
	for _, o := range r.objs {
		k, _ := o["kind"].(string)
		m[k]++
	}
	return m
}

// issuerKey is a licence issuer public key (PEM), as `nitropod license
// keygen` writes it.
func issuerKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func writeTemp(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestChartLicenseEnforcement: enforcement is on by default, an install
// without an issuer key fails with a message naming the values to set, and
// the shim config the node installer writes carries the [license] section.
func TestChartLicenseEnforcement(t *testing.T) {
	_, err := helmTemplate(t)
	if err == nil || !strings.Contains(err.Error(), "license.publicKeys") || !strings.Contains(err.Error(), "license.enforce=false") {
		t.Fatalf("helm template with default values: err = %v, want a failure naming license.publicKeys and the license.enforce=false opt-out", err)
	}

	shimToml := func(r *rendered) string {
		var cm corev1.ConfigMap
		if !r.get(t, "ConfigMap", "nitropod-node-installer", &cm) {
			t.Fatal("no ConfigMap nitropod-node-installer")
		}
		return cm.Data["shim.toml"]
	}

	key := issuerKey(t)
	r := mustTemplate(t, "--set-file", "license.publicKeys="+writeTemp(t, "issuer.pub", key))
	toml := shimToml(r)
	if !strings.Contains(toml, "[license]\nenforce = true\nkeys_file = \"/etc/nitropod/license-keys.pem\"") {
		t.Errorf("shim.toml with a key has no enforcing [license] section:\n%s", toml)
	}
	if !strings.Contains(toml, `backend = "nitro-cli"`) {
		t.Errorf("shim.toml lost nodeInstaller.shimConfig:\n%s", toml)
	}
	var cm corev1.ConfigMap
	r.get(t, "ConfigMap", "nitropod-node-installer", &cm)
	if cm.Data["license-keys.pem"] != key {
		t.Errorf("ConfigMap license-keys.pem = %q, want the issuer key", cm.Data["license-keys.pem"])
	}
	ds := installerDaemonSet(t, r)
	if env := envOf(ds.Spec.Template.Spec.InitContainers[0]); env["LICENSE_KEYS"] != "/license/keys.pem" {
		t.Errorf("installer env LICENSE_KEYS = %q, want /license/keys.pem", env["LICENSE_KEYS"])
	}
	if v := volumeNamed(ds.Spec.Template.Spec.Volumes, "license-keys"); v == nil || v.ConfigMap == nil || v.ConfigMap.Name != "nitropod-node-installer" {
		t.Errorf("license-keys volume = %+v, want the chart's ConfigMap", v)
	}

	r = mustTemplate(t, "--set", "license.existingConfigMap=site-keys")
	if toml := shimToml(r); !strings.Contains(toml, "enforce = true\nkeys_file =") {
		t.Errorf("shim.toml with existingConfigMap does not enforce:\n%s", toml)
	}
	ds = installerDaemonSet(t, r)
	if v := volumeNamed(ds.Spec.Template.Spec.Volumes, "license-keys"); v == nil || v.ConfigMap == nil || v.ConfigMap.Name != "site-keys" {
		t.Errorf("license-keys volume = %+v, want ConfigMap site-keys", v)
	}

	// What the shim makes of it (the shim's own parser).
	r = mustTemplate(t, "--set", "license.existingConfigMap=site-keys", "--set", "license.clusterID=6f1c2d3e-0000-4000-8000-000000000001")
	cfg, err := shim.ParseConfig([]byte(shimToml(r)), shim.DefaultConfig())
	if err != nil {
		t.Fatalf("the shim cannot parse the chart's shim.toml: %v", err)
	}
	if want := (shim.LicenseConfig{Enforce: true, KeysFile: "/etc/nitropod/license-keys.pem", ClusterID: "6f1c2d3e-0000-4000-8000-000000000001"}); cfg.License != want || cfg.Backend != "nitro-cli" {
		t.Errorf("shim config from the chart: backend %q, license %+v; want nitro-cli, %+v", cfg.Backend, cfg.License, want)
	}

	r = mustTemplate(t, "--set", "license.enforce=false")
	if toml := shimToml(r); !strings.Contains(toml, "[license]\nenforce = false\n") || strings.Contains(toml, "keys_file") || strings.Contains(toml, "cluster_id") {
		t.Errorf("shim.toml with license.enforce=false:\n%s", toml)
	}

	// Without the node installer the chart writes no shim config, so it
	// needs no key (the e2e harness writes its own).
	mustTemplate(t, "--set", "nodeInstaller.enabled=false")

	for _, tc := range []struct{ name, file, want string }{
		{"a private key", privateKeyFile(t), "PRIVATE KEY"},
		{"not PEM", "just text\n", "not a PEM public key"},
	} {
		_, err := helmTemplate(t, "--set-file", "license.publicKeys="+writeTemp(t, "k", tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("license.publicKeys = %s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	_, err = helmTemplate(t, "--set", "license.enforce=false", "--set-string", "nodeInstaller.shimConfig=backend = \"qemu\"\n[license]\nenforce = false\n")
	if err == nil || !strings.Contains(err.Error(), "[license] section") {
		t.Errorf("shimConfig with its own [license]: err = %v", err)
	}
}

func privateKeyFile(t *testing.T) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func installerDaemonSet(t *testing.T, r *rendered) *appsv1.DaemonSet {
	t.Helper()
	var ds appsv1.DaemonSet
	if !r.get(t, "DaemonSet", "nitropod-node-installer", &ds) {
		t.Fatal("no DaemonSet nitropod-node-installer")
	}
	if len(ds.Spec.Template.Spec.InitContainers) != 1 || len(ds.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("node installer has %d init containers and %d containers, want 1 and 1", len(ds.Spec.Template.Spec.InitContainers), len(ds.Spec.Template.Spec.Containers))
	}
	return &ds
}

func envOf(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		m[e.Name] = e.Value
	}
	return m
}

func volumeNamed(vs []corev1.Volume, name string) *corev1.Volume {
	for i := range vs {
		if vs[i].Name == name {
			return &vs[i]
		}
	}
	return nil
}

// TestChartNodeInstallerPrivileges: only the init container that installs
// is privileged and sees the host; the container that keeps the Pod alive
// runs as non-root with no capabilities, and the Pod shares no host
// namespace.
func TestChartNodeInstallerPrivileges(t *testing.T) {
	r := mustTemplate(t, "--set", "license.enforce=false")
	ds := installerDaemonSet(t, r)
	pod := ds.Spec.Template.Spec
	if pod.HostPID || pod.HostNetwork || pod.HostIPC {
		t.Errorf("node installer Pod shares host namespaces: hostPID=%v hostNetwork=%v hostIPC=%v", pod.HostPID, pod.HostNetwork, pod.HostIPC)
	}
	init := pod.InitContainers[0]
	if init.SecurityContext == nil || init.SecurityContext.Privileged == nil || !*init.SecurityContext.Privileged {
		t.Errorf("install init container is not privileged: %+v", init.SecurityContext)
	}
	hostVolumes := map[string]bool{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostVolumes[v.Name] = true
		}
	}
	if !hostVolumes["host"] || !hostVolumes["host-proc"] {
		t.Errorf("host volumes = %v, want host and host-proc", hostVolumes)
	}
	main := pod.Containers[0]
	sc := main.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("keep-alive container has no securityContext")
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("keep-alive container is privileged")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0:
		t.Errorf("keep-alive container may run as root: runAsNonRoot=%v runAsUser=%v", sc.RunAsNonRoot, sc.RunAsUser)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("keep-alive container allows privilege escalation")
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0:
		t.Errorf("keep-alive container capabilities = %+v, want drop ALL and nothing added", sc.Capabilities)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("keep-alive container has a writable root filesystem")
	}
	for _, m := range main.VolumeMounts {
		if hostVolumes[m.Name] {
			t.Errorf("keep-alive container mounts host volume %s", m.Name)
		}
	}
}

// TestChartWebhookCertificates: the "helm" mode makes a Secret whose CA is
// the caBundle (at install time; render.sh never uses it), "bootstrap"
// renders no key, gives the webhook exactly the RBAC to patch its own
// caBundle, and refuses several replicas.
func TestChartWebhookCertificates(t *testing.T) {
	r := mustTemplate(t, "--set", "license.enforce=false")
	var sec corev1.Secret
	if !r.get(t, "Secret", "nitropod-webhook-tls", &sec) {
		t.Fatal("certificates=helm: no Secret nitropod-webhook-tls")
	}
	if sec.Annotations["nitropod.io/certificate-names"] == "" {
		t.Error("certificates=helm: the Secret does not record the names its certificate was made for")
	}
	mwc := mutatingConfig(t, r)
	if !bytes.Equal(mwc.caBundle, sec.Data["ca.crt"]) || len(mwc.caBundle) == 0 {
		t.Errorf("certificates=helm: caBundle (%d bytes) is not the Secret's ca.crt (%d bytes)", len(mwc.caBundle), len(sec.Data["ca.crt"]))
	}
	if r.kinds()["ClusterRole"] != 0 {
		t.Error("certificates=helm: the webhook gets a ClusterRole it does not need")
	}

	r = mustTemplate(t, "--set", "license.enforce=false", "--set", "webhook.certificates=bootstrap", "--set", "webhook.replicas=1")
	if keys := findPrivateKeys([]byte(r.raw)); len(keys) > 0 {
		t.Errorf("certificates=bootstrap renders a private key: %v", keys)
	}
	if n := r.kinds()["Secret"]; n != 0 {
		t.Errorf("certificates=bootstrap renders %d Secrets, want none", n)
	}
	if mwc := mutatingConfig(t, r); len(mwc.caBundle) != 0 {
		t.Error("certificates=bootstrap renders a caBundle; the webhook patches it")
	}
	var cr rbacv1.ClusterRole
	if !r.get(t, "ClusterRole", "nitropod-webhook-cabundle", &cr) {
		t.Fatal("certificates=bootstrap: no ClusterRole nitropod-webhook-cabundle")
	}
	want := rbacv1.PolicyRule{APIGroups: []string{"admissionregistration.k8s.io"}, Resources: []string{"mutatingwebhookconfigurations"}, ResourceNames: []string{"nitropod-webhook"}, Verbs: []string{"get", "patch"}}
	if len(cr.Rules) != 1 || fmt.Sprint(cr.Rules[0]) != fmt.Sprint(want) {
		t.Errorf("ClusterRole rules = %+v, want exactly %+v", cr.Rules, want)
	}
	var crb rbacv1.ClusterRoleBinding
	if !r.get(t, "ClusterRoleBinding", "nitropod-webhook-cabundle", &crb) || len(crb.Subjects) != 1 || crb.Subjects[0].Name != "nitropod-webhook" || crb.RoleRef.Name != "nitropod-webhook-cabundle" {
		t.Errorf("ClusterRoleBinding = %+v, want the webhook's ServiceAccount bound to nitropod-webhook-cabundle", crb)
	}
	var dep appsv1.Deployment
	if !r.get(t, "Deployment", "nitropod-webhook", &dep) {
		t.Fatal("no Deployment nitropod-webhook")
	}
	args := strings.Join(dep.Spec.Template.Spec.Containers[0].Args, " ")
	for _, w := range []string{"--bootstrap-certs", "--webhook-config-name=nitropod-webhook", "--bootstrap-dns-names=nitropod-webhook.nitropod-system.svc,", "--bootstrap-ca-file=/tls/ca.crt"} {
		if !strings.Contains(args, w) {
			t.Errorf("webhook args %q lack %q", args, w)
		}
	}
	if v := volumeNamed(dep.Spec.Template.Spec.Volumes, "tls"); v == nil || v.EmptyDir == nil {
		t.Errorf("certificates=bootstrap: tls volume = %+v, want an emptyDir", v)
	}
	if a := dep.Spec.Template.Spec.AutomountServiceAccountToken; a == nil || !*a {
		t.Error("certificates=bootstrap: the webhook gets no service account token to patch its caBundle with")
	}

	if _, err := helmTemplate(t, "--set", "license.enforce=false", "--set", "webhook.certificates=bootstrap"); err == nil || !strings.Contains(err.Error(), "webhook.replicas=1") {
		t.Errorf("certificates=bootstrap with 2 replicas: err = %v, want a failure asking for webhook.replicas=1", err)
	}
	if _, err := helmTemplate(t, "--set", "license.enforce=false", "--set", "webhook.certificates=none"); err == nil || !strings.Contains(err.Error(), "bootstrap") {
		t.Errorf("certificates=none: err = %v, want a failure listing the modes", err)
	}
}

type webhookConfig struct {
	caBundle []byte
}

func mutatingConfig(t *testing.T, r *rendered) webhookConfig {
	t.Helper()
	var mwc struct {
		Webhooks []struct {
			ClientConfig struct {
				CABundle []byte `json:"caBundle"`
			} `json:"clientConfig"`
		} `json:"webhooks"`
	}
	if !r.get(t, "MutatingWebhookConfiguration", "nitropod-webhook", &mwc) || len(mwc.Webhooks) != 1 {
		t.Fatal("no MutatingWebhookConfiguration nitropod-webhook with one webhook")
	}
	return webhookConfig{caBundle: mwc.Webhooks[0].ClientConfig.CABundle}
}

// TestInstallScript runs the node installer's script against a scratch
// root twice (the second run changes nothing), with a FAKE nsenter standing
// in for the host's systemd (this machine's containerd must not restart).
func TestInstallScript(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	host, src, cfg, lic, bin := filepath.Join(dir, "host"), filepath.Join(dir, "src"), filepath.Join(dir, "config"), filepath.Join(dir, "license"), filepath.Join(dir, "fakebin")
	hostProc := filepath.Join(dir, "host-proc")
	for _, d := range []string{host, src, cfg, lic, bin, filepath.Join(hostProc, "1", "ns")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{"containerd-shim-nitro-v1", "nitropod-launcher", "nitropod-fetch", "nitropod-init", "nitropod"} {
		if err := os.WriteFile(filepath.Join(src, b), []byte("#!/bin/sh\necho "+b+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	chart := filepath.Join(repoDeploy(t), "helm", "nitropod", "files")
	for f, src := range map[string]string{"install.sh": "install.sh", "containerd-nitro.toml": "containerd-nitro.toml", "containerd-nitro-v3.toml": "containerd-nitro-v3.toml", "deny-vsock.json": "seccomp/deny-vsock.json"} {
		b, err := os.ReadFile(filepath.Join(chart, src))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfg, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	profile, err := os.ReadFile(filepath.Join(chart, "seccomp", "deny-vsock.json"))
	if err != nil {
		t.Fatal(err)
	}
	shimToml := "backend = \"qemu\"\n\n[license]\nenforce = true\nkeys_file = \"/etc/nitropod/license-keys.pem\"\n"
	key := issuerKey(t)
	if err := os.WriteFile(filepath.Join(cfg, "shim.toml"), []byte(shimToml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lic, "keys.pem"), []byte(key), 0o644); err != nil {
		t.Fatal(err)
	}
	// The FAKE nsenter records its arguments; for the socket check it runs
	// the test command against the scratch root.
	nsLog := filepath.Join(dir, "nsenter.log")
	fake := "#!/bin/sh\necho \"$@\" >> " + nsLog + "\n" +
		"for a; do shift; [ \"$a\" = -- ] && break; done\n" +
		"if [ \"$1\" = test ]; then exec test \"$2\" \"" + host + "$3\"; fi\nexit 0\n"
	if err := os.WriteFile(filepath.Join(bin, "nsenter"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	sockDir := filepath.Join(host, "run", "containerd")
	if err := os.MkdirAll(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(sockDir, "containerd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	run := func(extra ...string) string {
		t.Helper()
		cmd := exec.Command("sh", filepath.Join(cfg, "install.sh"))
		cmd.Env = append([]string{"PATH=" + bin + ":" + os.Getenv("PATH"), "HOST=" + host, "HOST_PROC=" + hostProc, "SRC=" + src, "CFG=" + cfg,
			"RESTART_CONTAINERD=true", "LICENSE_KEYS=" + filepath.Join(lic, "keys.pem"), "LICENSE_KEYS_DEST=/etc/nitropod/license-keys.pem"}, extra...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("install.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	out := run()
	if !strings.Contains(out, "changed=1") || !strings.Contains(out, "restarting containerd") {
		t.Errorf("first run:\n%s", out)
	}
	for p, want := range map[string]string{
		"/etc/nitropod/shim.toml":                           shimToml,
		"/etc/nitropod/license-keys.pem":                    key,
		"/opt/nitropod/bin/nitropod-init":                   "#!/bin/sh\necho nitropod-init\n",
		"/var/lib/kubelet/seccomp/nitropod/deny-vsock.json": string(profile),
	} {
		b, err := os.ReadFile(filepath.Join(host, p))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
	main, err := os.ReadFile(filepath.Join(host, "etc", "containerd", "config.toml"))
	if err != nil || !strings.Contains(string(main), "# BEGIN nitropod\n") || !strings.Contains(string(main), `runtime_type = "io.containerd.nitro.v1"`) {
		t.Errorf("containerd config.toml = %q, %v", main, err)
	}
	ns, err := os.ReadFile(nsLog)
	if err != nil {
		t.Fatal(err)
	}
	// The host's PID 1 is reached through the mounted host /proc, not
	// through hostPID (--target 1).
	if !strings.Contains(string(ns), "--mount="+hostProc+"/1/ns/mnt") || !strings.Contains(string(ns), "--pid="+hostProc+"/1/ns/pid") ||
		!strings.Contains(string(ns), "systemctl restart containerd") || strings.Contains(string(ns), "--target") {
		t.Errorf("nsenter calls:\n%s", ns)
	}

	if out := run(); !strings.Contains(out, "changed=0") || strings.Contains(out, "restarting") {
		t.Errorf("second run changed something:\n%s", out)
	}

	// Enforcement without a key file fails the installer, so the Pod
	// retries and says why.
	if err := os.WriteFile(filepath.Join(lic, "keys.pem"), []byte("not a key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", filepath.Join(cfg, "install.sh"))
	cmd.Env = []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "HOST=" + host, "HOST_PROC=" + hostProc, "SRC=" + src, "CFG=" + cfg,
		"RESTART_CONTAINERD=false", "LICENSE_KEYS=" + filepath.Join(lic, "keys.pem")}
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(b), "no PEM public key") {
		t.Errorf("install.sh with a bad keys file: err = %v\n%s", err, b)
	}
}
