package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nitropod/nitropod/test/images"
)

// Namespace is where the harness installs nitropod's objects.
const Namespace = "nitropod-system"

// NitropodOptions says how to install nitropod into the cluster.
type NitropodOptions struct {
	// Chart is deploy/helm/nitropod.
	Chart string
	// FakePool is the fake Nitro host's enclave CPU pool (cpu-list syntax)
	// of an 8-CPU, 2-threads-per-core node; MemoryMiB its 2 MiB hugepages.
	FakePool  string
	MemoryMiB int
	// InCluster runs the webhook (Deployment) and the device plugin
	// (DaemonSet) as Pods from the chart, from an image made of BinDir's
	// binaries and pushed to the cluster's registry (needs
	// Options.ControllerManager). Otherwise they run as processes of this
	// machine, the webhook behind the chart's webhook.url.
	InCluster bool
	// BinDir holds nitropod's binaries (make build) for the image.
	BinDir string
}

// ImageRepo and ImageTag name the chart's image in tests (containerd pulls
// ghcr.io through the cluster's registry).
const (
	ImageRepo = "ghcr.io/nitropod/nitropod"
	ImageTag  = "e2e"
)

// ShimConfig writes a shim configuration for emulated enclaves (qemu
// backend, TCG) to path. bin holds nitropod-init and nitropod-launcher;
// blobs is the emulation blob set; cache the EIF cache (keep it across
// runs for cache hits). licenseKeys, when not empty, is a PEM file of
// trusted licence issuer keys and switches licence enforcement on (the
// shim then refuses enclave containers without a valid licence); empty
// leaves it off. Enclaves are sized from kubelet's pod-resources API at
// podResources (PodResourcesSocket of the cluster's directory).
func ShimConfig(path, bin, blobs, cache, runDir, licenseKeys, podResources string) error {
	cfg := fmt.Sprintf(`# Written by the e2e harness: emulated enclaves.
backend = "qemu"
blobs_dir = %q
init_path = %q
launcher_path = %q
cache_dir = %q
run_dir = %q

[qemu]
binary = "qemu-system-x86_64"
accel = "tcg"

[allocation]
source = "kubelet"
pod_resources_socket = %q

[license]
enforce = %t
keys_file = %q
`, blobs, filepath.Join(bin, "nitropod-init"), filepath.Join(bin, "nitropod-launcher"), cache, runDir,
		podResources, licenseKeys != "", licenseKeys)
	return writeFile(path, cfg, 0o644)
}

// Issuer is a licence issuer key pair made for one cluster run with
// `nitropod license keygen`: the nodes trust PublicKey (pass it to
// ShimConfig), Issue signs licences with the private key as a vendor would.
type Issuer struct {
	// Nitropod is the nitropod CLI.
	Nitropod string
	// PrivateKey and PublicKey are the PEM files.
	PrivateKey, PublicKey string
}

// NewIssuer makes a fresh issuer key pair in dir (which must exist) with the
// nitropod CLI at nitropodBin.
func NewIssuer(ctx context.Context, nitropodBin, dir string) (*Issuer, error) {
	is := &Issuer{
		Nitropod:   nitropodBin,
		PrivateKey: filepath.Join(dir, "license-issuer.key"),
		PublicKey:  filepath.Join(dir, "license-issuer.pub"),
	}
	if out, err := exec.CommandContext(ctx, nitropodBin, "license", "keygen",
		"--private-key", is.PrivateKey, "--public-key", is.PublicKey).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nitropod license keygen: %w: %s", err, out)
	}
	return is, nil
}

// Issue writes a licence for licensee, valid from issued (zero: now) until
// expires (exclusive), to path with `nitropod license issue`.
func (is *Issuer) Issue(ctx context.Context, path, licensee string, issued, expires time.Time) error {
	args := []string{"license", "issue", "--key", is.PrivateKey, "--licensee", licensee,
		"--expires", expires.UTC().Format(time.RFC3339), "-o", path}
	if !issued.IsZero() {
		args = append(args, "--issued", issued.UTC().Format(time.RFC3339))
	}
	if out, err := exec.CommandContext(ctx, is.Nitropod, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("nitropod license issue: %w: %s", err, out)
	}
	return nil
}

// InstallNitropod renders deploy/'s Helm chart and applies it, with the
// device plugin over a FAKE Nitro pool (no Nitro hardware here) and without
// the node installer (the harness configured containerd with the same
// runtime lines). With o.InCluster the webhook and device plugin run as the
// chart's Deployment and DaemonSet; otherwise as processes of this machine,
// the webhook at the chart's webhook.url with the chart's generated
// certificate. It returns when the node advertises enclave CPUs.
func (c *Cluster) InstallNitropod(ctx context.Context, o NitropodOptions) error {
	helm, err := c.bin("helm")
	if err != nil {
		return err
	}
	dpBin, err := c.bin("nitropod-device-plugin")
	if err != nil {
		return err
	}
	d := filepath.Join(c.opts.Dir, "nitropod")
	sysfs, dev := filepath.Join(d, "fake", "sys"), filepath.Join(d, "fake", "dev")
	if o.FakePool == "" {
		o.FakePool = "1,5"
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 4096
	}
	if out, err := exec.CommandContext(ctx, dpBin, "fake-node", "--sysfs-root", sysfs, "--dev-root", dev,
		"--cpus", "8", "--threads-per-core", "2", "--pool", o.FakePool,
		"--memory-2m-mib", strconv.Itoa(o.MemoryMiB)).CombinedOutput(); err != nil {
		return fmt.Errorf("writing fake Nitro node: %w: %s", err, out)
	}
	if err := c.PrepareNamespace(ctx, Namespace); err != nil {
		return err
	}
	if o.InCluster {
		return c.installInCluster(ctx, o, helm, d, sysfs, dev)
	}
	return c.installOnHost(ctx, o, helm, dpBin, d, sysfs, dev)
}

func (c *Cluster) installOnHost(ctx context.Context, o NitropodOptions, helm, dpBin, d, sysfs, dev string) error {
	webhookBin, err := c.bin("nitropod-webhook")
	if err != nil {
		return err
	}
	// The chart's webhook.url (and so the port) is rendered into the
	// configuration with the certificate the webhook must serve: pick the
	// port first, and pick again if another process takes it first.
	rendered := filepath.Join(d, "nitropod.yaml")
	if err := retryTakenPort(func() error { return c.startHostWebhook(ctx, o, helm, webhookBin, d, rendered) }); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "", "apply", "-f", rendered); err != nil {
		return err
	}
	dpConfig := filepath.Join(d, "device-plugin.yaml")
	if err := writeFile(dpConfig, "memoryBlockMiB: 64\nenclaveSlots: 4\n", 0o644); err != nil {
		return err
	}
	// (Port 0: nothing here reads the metrics; the plugin logs the address.)
	dp, err := c.Start("device-plugin", false, nil, dpBin,
		"--sysfs-root="+sysfs, "--dev-root="+dev,
		"--device-plugin-dir="+c.DevicePluginDir,
		"--config="+dpConfig, "--metrics-addr=127.0.0.1:0",
		"--rescan-interval=2s", "--log-level=debug")
	if err != nil {
		return err
	}
	c.DevicePlugin = dp
	return c.waitProc(ctx, dp, 60*time.Second, c.enclaveCPUsAdvertised(ctx))
}

func (c *Cluster) enclaveCPUsAdvertised(ctx context.Context) func() error {
	return func() error {
		v, err := c.Allocatable(ctx, "nitropod.io/enclave-cpu")
		if err != nil {
			return err
		}
		if v == "" || v == "0" {
			return fmt.Errorf("node advertises no nitropod.io/enclave-cpu yet")
		}
		return nil
	}
}

// installInCluster runs the chart's webhook Deployment and device plugin
// DaemonSet (over the fake pool's host directories) from a test image.
func (c *Cluster) installInCluster(ctx context.Context, o NitropodOptions, helm, d, sysfs, dev string) error {
	img, err := images.Nitropod(o.BinDir, "/bin/busybox", filepath.Join(d, "image"))
	if err != nil {
		return err
	}
	if _, err := images.Push(img, c.Registry, strings.TrimPrefix(ImageRepo, "ghcr.io/")+":"+ImageTag); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, helm, "template", "nitropod", o.Chart,
		"--namespace", Namespace,
		"--set", "image.repository="+ImageRepo,
		"--set", "image.tag="+ImageTag,
		"--set", "image.pullPolicy=Always",
		"--set", "devicePlugin.sysfsHostPath="+sysfs,
		"--set", "devicePlugin.devHostPath="+dev,
		"--set", "nodeInstaller.enabled=false").Output()
	if err != nil {
		return fmt.Errorf("helm template: %w: %s", err, stderrOf(err))
	}
	rendered := filepath.Join(d, "nitropod.yaml")
	if err := writeFile(rendered, string(out), 0o600); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "", "apply", "-f", rendered); err != nil {
		return err
	}
	for _, obj := range []string{"deployment/nitropod-webhook", "daemonset/nitropod-device-plugin"} {
		if _, err := c.Kubectl(ctx, "", "-n", Namespace, "rollout", "status", obj, "--timeout=4m"); err != nil {
			desc, _ := c.Kubectl(ctx, "", "-n", Namespace, "describe", "pods")
			return fmt.Errorf("%w\n%s", err, desc)
		}
	}
	return waitFor(ctx, 60*time.Second, time.Second, c.enclaveCPUsAdvertised(ctx))
}

// DevicePluginLogs is the device plugin's log so far (its process's log
// file, or its DaemonSet Pod's log).
func (c *Cluster) DevicePluginLogs(ctx context.Context) (string, error) {
	if c.DevicePlugin != nil {
		b, err := os.ReadFile(c.DevicePlugin.Log)
		return string(b), err
	}
	return c.Kubectl(ctx, "", "-n", Namespace, "logs", "daemonset/nitropod-device-plugin")
}

// Allocatable is the node's allocatable amount of resource ("" if none).
func (c *Cluster) Allocatable(ctx context.Context, resource string) (string, error) {
	out, err := c.Kubectl(ctx, "", "get", "node", c.NodeName, "-o",
		"jsonpath={.status.allocatable."+strings.ReplaceAll(resource, ".", `\.`)+"}")
	return strings.TrimSpace(out), err
}

func net2(host string, port int) string { return host + ":" + strconv.Itoa(port) }

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// tlsFromRendered finds the chart's generated webhook TLS Secret in the
// rendered manifests.
func tlsFromRendered(out []byte) (cert, key []byte, err error) {
	for _, doc := range bytes.Split(out, []byte("\n---")) {
		var obj struct {
			Kind string            `json:"kind"`
			Type string            `json:"type"`
			Data map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			continue
		}
		if obj.Kind != "Secret" || obj.Type != "kubernetes.io/tls" {
			continue
		}
		cert, err1 := base64.StdEncoding.DecodeString(obj.Data["tls.crt"])
		key, err2 := base64.StdEncoding.DecodeString(obj.Data["tls.key"])
		if err1 != nil || err2 != nil {
			return nil, nil, fmt.Errorf("decoding the chart's webhook TLS secret: %w", errors.Join(err1, err2))
		}
		return cert, key, nil
	}
	return nil, nil, fmt.Errorf("the rendered chart has no kubernetes.io/tls Secret for the webhook")
}

// startHostWebhook renders the chart with the webhook at a free port of
// HostIP into rendered and runs nitropod-webhook there with the chart's
// certificate until it is ready.
func (c *Cluster) startHostWebhook(ctx context.Context, o NitropodOptions, helm, webhookBin, d, rendered string) error {
	port, err := freePort(c.HostIP)
	if err != nil {
		return err
	}
	url := fmt.Sprintf("https://%s:%d/mutate-pods", c.HostIP, port)
	out, err := exec.CommandContext(ctx, helm, "template", "nitropod", o.Chart,
		"--namespace", Namespace,
		"--set", "webhook.url="+url,
		"--set", "devicePlugin.enabled=false",
		"--set", "nodeInstaller.enabled=false").Output()
	if err != nil {
		return fmt.Errorf("helm template: %w: %s", err, stderrOf(err))
	}
	if err := writeFile(rendered, string(out), 0o600); err != nil {
		return err
	}
	cert, key, err := tlsFromRendered(out)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(d, "tls.crt"), filepath.Join(d, "tls.key")
	if err := writeFile(certFile, string(cert), 0o600); err != nil {
		return err
	}
	if err := writeFile(keyFile, string(key), 0o600); err != nil {
		return err
	}
	wh, err := c.Start("webhook", false, nil, webhookBin,
		"--listen="+net2(c.HostIP, port), "--tls-cert-file="+certFile, "--tls-private-key-file="+keyFile)
	if err != nil {
		return err
	}
	// Ready when the server at the port serves the chart's certificate:
	// it is this webhook, not whoever else might listen there.
	block, _ := pem.Decode(cert)
	if block == nil {
		return fmt.Errorf("the chart's webhook certificate is not PEM")
	}
	pinned := &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 || !bytes.Equal(raw[0], block.Bytes) {
			return fmt.Errorf("the server at %s does not serve the chart's webhook certificate", net2(c.HostIP, port))
		}
		return nil
	}}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: pinned}}
	defer client.CloseIdleConnections()
	if err := c.waitProc(ctx, wh, 30*time.Second, func() error {
		resp, err := client.Get(fmt.Sprintf("https://%s/readyz", net2(c.HostIP, port)))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("webhook readyz: %s", resp.Status)
		}
		return nil
	}); err != nil {
		return err
	}
	return nil
}
