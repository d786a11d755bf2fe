//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/cpio"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/internal/testenv"
)

// secretValue is grepped for on the node after the Pods are gone.
const secretValue = "e2e-secret-value-9d41c7"

const deliverDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: delivered
spec:
  replicas: 2
  selector: {matchLabels: {app: delivered}}
  template:
    metadata:
      labels: {app: delivered, nitro.k8s.anjuna.io/managed: "yes"}
    spec:
      containers:
      - name: app
        image: busybox:latest
        command: [sh, -c, 'echo "env-secret=$DB_PASSWORD"; echo "file-secret=$(cat /etc/secret/password)"; echo "token-bytes=$(wc -c < /var/run/secrets/kubernetes.io/serviceaccount/token)"; while true; do echo "conf=$(cat /etc/config/app.conf)"; sleep 1; done']
        env:
        - {name: MODE, value: e2e}
        - name: DB_PASSWORD
          valueFrom: {secretKeyRef: {name: app-secret, key: password}}
        resources:
          limits: {cpu: "2", memory: 256Mi}
        volumeMounts:
        - {name: config, mountPath: /etc/config}
        - {name: secret, mountPath: /etc/secret}
        - {name: anjuna-license, mountPath: /opt/anjuna, readOnly: true}
      volumes:
      - name: config
        configMap: {name: app-config}
      - name: secret
        secret: {secretName: app-secret}
      - name: anjuna-license
        secret: {secretName: anjuna-license}
`

var pcrLine = regexp.MustCompile(`nitropod: enclave measurements HashAlgorithm="Sha384 \{ \.\.\. \}" PCR0=([0-9a-f]{96}) PCR1=([0-9a-f]{96}) PCR2=([0-9a-f]{96})`)

// TestDeliveredConfiguration: the two replicas of a Deployment measure the
// same, equal to `nitropod pcr -f` of the manifest, the second a cache hit;
// the app sees a Secret env var, a Secret file, a ConfigMap file and the
// projected service-account token; an edited ConfigMap reaches the running
// enclave; a PVC in an enclave container is refused with its reason; and
// once the Pods are gone no Secret value is left in nitropod's node state.
func TestDeliveredConfiguration(t *testing.T) {
	e := startNitroClusterPool(t, lifecyclePool)
	lic := e.issue(t, "Delivery Corp", time.Time{}, time.Now().Add(24*time.Hour))
	e.mustKubectl("", "create", "secret", "generic", nitropod.LicenseSecretName, "--from-file="+nitropod.LicenseSecretKey+"="+lic)
	e.mustKubectl("", "create", "secret", "generic", "app-secret", "--from-literal=password="+secretValue)
	e.mustKubectl("", "create", "configmap", "app-config", "--from-literal=app.conf=version-one")
	e.mustKubectl(deliverDeployment, "apply", "-f", "-")

	var pods []string
	deadline := time.Now().Add(10 * time.Minute)
	for {
		out, _ := e.kubectl("", "get", "pods", "-l", "app=delivered", "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[0].ready}{\"\\n\"}{end}")
		pods = pods[:0]
		n := 0
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 {
				pods = append(pods, f[0])
				if f[1] == "true" {
					n++
				}
			}
		}
		if n == 2 && len(pods) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Deployment's 2 replicas are not Ready after 10m: %s", out)
		}
		time.Sleep(2 * time.Second)
	}

	pcr0 := map[string]string{}
	hits := 0
	for _, p := range pods {
		e.waitLogs(p, "conf=version-one", 2*time.Minute)
		logs := e.mustKubectl("", "logs", p)
		for _, want := range []string{"env-secret=" + secretValue, "file-secret=" + secretValue} {
			if !strings.Contains(logs, want) {
				t.Errorf("%s: log lacks %q:\n%s", p, want, logs)
			}
		}
		if m := regexp.MustCompile(`token-bytes=(\d+)`).FindStringSubmatch(logs); m == nil || m[1] == "0" {
			t.Errorf("%s: the projected service-account token is not in the enclave:\n%s", p, logs)
		}
		m := pcrLine.FindStringSubmatch(logs)
		if m == nil {
			t.Fatalf("%s: no measurements line in kubectl logs:\n%s", p, logs)
		}
		pcr0[p] = m[1]
		pod, err := e.pod(p)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(e.imageReady(pod.Status.ContainerStatuses[0].ContainerID), "cache_hit=true") {
			hits++
		}
	}
	if pcr0[pods[0]] != pcr0[pods[1]] {
		t.Errorf("the replicas measure differently: %v", pcr0)
	}
	if hits != 1 {
		t.Errorf("%d of the 2 replicas hit the EIF cache; want exactly the second", hits)
	}

	// nitropod pcr -f of the same manifest, the image pulled from the
	// cluster's registry, the node's blob set and init.
	work := t.TempDir()
	manifest := filepath.Join(work, "deploy.yaml")
	if err := os.WriteFile(manifest, []byte(deliverDeployment), 0o644); err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(e.c.Registry+"/library/busybox:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	lp, err := layout.Write(filepath.Join(work, "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testenv.Binary(t, "nitropod"), "pcr", "-f", manifest, "--oci-layout", filepath.Join(work, "oci"),
		"--blobs", testenv.EmuBlobs(t), "--init", testenv.Binary(t, "nitropod-init"), "--explain")
	var explained strings.Builder
	cmd.Stderr = &explained
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nitropod pcr: %v: %s%s", err, out, explained.String())
	}
	var got map[string]map[string]string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("nitropod pcr output %s: %v", out, err)
	}
	if got["app"]["PCR0"] != pcr0[pods[0]] || got["app"]["HashAlgorithm"] != "Sha384 { ... }" {
		t.Errorf("nitropod pcr -f says %v; the node measured PCR0 %s\nnitropod pcr: %s\nthe node's: %s",
			got, pcr0[pods[0]], explained.String(), nodeProcesses(t, filepath.Join(e.dir, "eif-cache")))
	} else {
		t.Logf("nitropod pcr -f agrees with the node: PCR0 %s", pcr0[pods[0]])
	}

	// An edited ConfigMap reaches the running enclaves (kubelet syncs the
	// volume within its sync period; the shim's watch then takes ≤ 1 s).
	e.mustKubectl(`apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data: {app.conf: version-two}
`, "apply", "-f", "-")
	start := time.Now()
	e.waitLogs(pods[0], "conf=version-two", 3*time.Minute)
	t.Logf("the edited ConfigMap reached the enclave %.1fs after kubectl apply", time.Since(start).Seconds())

	// A PVC in an enclave container is refused at admission.
	pvc := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: pvc-pod
  labels: {nitro.k8s.anjuna.io/managed: "yes"}
spec:
  containers:
  - name: app
    image: busybox:latest
    command: [sleep, "1000"]
    resources: {limits: {cpu: "2", memory: 256Mi}}
    volumeMounts: [{name: data, mountPath: /data}, {name: anjuna-license, mountPath: /opt/anjuna}]
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: data}}
  - {name: anjuna-license, secret: {secretName: %s}}
`, nitropod.LicenseSecretName)
	if out, err := e.kubectl(pvc, "apply", "-f", "-"); err == nil || !strings.Contains(err.Error(), "volume data (persistentVolumeClaim) cannot be mounted into an enclave") {
		t.Errorf("PVC Pod: %v %s; want the webhook's refusal naming the volume", err, out)
	}

	// After the Pods are gone, nitropod's node state holds no Secret value.
	e.mustKubectl("", "delete", "deployment", "delivered", "--wait=true")
	for _, p := range pods {
		e.waitGone(p, 3*time.Minute)
	}
	time.Sleep(2 * time.Second)
	for _, dir := range []string{filepath.Join(e.dir, "eif-cache"), e.runDir, filepath.Join(e.dir, "containerd", "state")} {
		out, _ := exec.Command("grep", "-rl", "-a", secretValue, dir).Output()
		if s := strings.TrimSpace(string(out)); s != "" {
			t.Errorf("the Secret value is left in %s: %s", dir, s)
		}
	}
}

// nodeProcesses returns the measured process descriptions of the EIFs in
// the node's cache (nitropod/process.json of each customer ramdisk).
func nodeProcesses(t *testing.T, cache string) string {
	var out strings.Builder
	files, _ := filepath.Glob(filepath.Join(cache, "*"))
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		st, _ := f.Stat()
		ef, err := eif.Open(f, st.Size())
		if err != nil {
			f.Close()
			continue
		}
		for _, s := range ef.Sections {
			if s.Type != eif.SectionRamdisk {
				continue
			}
			r := cpio.NewReader(ef.Data(s))
			for {
				h, err := r.Next()
				if err != nil {
					break
				}
				if h.Name == ramdisk.ProcessPath {
					b, _ := io.ReadAll(r)
					fmt.Fprintf(&out, "%s: %s\n", filepath.Base(p), b)
				}
			}
		}
		f.Close()
	}
	return out.String()
}
