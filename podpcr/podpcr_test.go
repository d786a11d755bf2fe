package podpcr

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/images"
)

const deployment = `
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {a: b}
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
      - name: app
        image: busybox
        command: [sh, -c, "cat /etc/app/a; sleep 1000"]
        env:
        - {name: MODE, value: prod}
        - name: DB_PASSWORD
          valueFrom: {secretKeyRef: {name: db, key: password}}
        resources: {limits: {cpu: "2", memory: 256Mi}}
        volumeMounts: [{name: cfg, mountPath: /etc/app}]
      volumes:
      - {name: cfg, configMap: {name: cfg}}
`

func TestTemplatesOfEveryKind(t *testing.T) {
	podSpec := `{containers: [{name: app, image: busybox}]}`
	tpl := `{metadata: {labels: {x: y}}, spec: ` + podSpec + `}`
	for kind, doc := range map[string]string{
		"Pod":         "apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: " + podSpec,
		"Deployment":  "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec: {selector: {}, template: " + tpl + "}",
		"StatefulSet": "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: w}\nspec: {selector: {}, template: " + tpl + "}",
		"DaemonSet":   "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: w}\nspec: {selector: {}, template: " + tpl + "}",
		"ReplicaSet":  "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: w}\nspec: {selector: {}, template: " + tpl + "}",
		"Job":         "apiVersion: batch/v1\nkind: Job\nmetadata: {name: w}\nspec: {template: " + tpl + "}",
		"CronJob":     "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: w}\nspec: {schedule: '* * * * *', jobTemplate: {spec: {template: " + tpl + "}}}",
	} {
		ts, err := Templates([]byte(doc))
		if err != nil {
			t.Errorf("%s: %v", kind, err)
			continue
		}
		if len(ts) != 1 || ts[0].Kind != kind || ts[0].Name != "w" || ts[0].Pod.Spec.Containers[0].Name != "app" {
			t.Errorf("%s: templates = %+v", kind, ts)
		}
	}
	if _, err := Templates([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n")); err == nil || !strings.Contains(err.Error(), `kinds found: ["Service"]`) {
		t.Errorf("manifest without workloads: %v", err)
	}
	if _, err := Templates([]byte("apiVersion: apps/v1\nkind: Deployment\nspec: {bogus: 1}\n")); err == nil {
		t.Error("unknown field accepted")
	}
}

// fakeBlobs is a FAKE blob set (not bootable) and init: measuring needs
// only their bytes.
func fakeBlobs(t *testing.T) Options {
	dir := t.TempDir()
	for name, body := range map[string]string{"bzImage": "not a kernel", "cmdline": "console=ttyS0 quiet", "init": "not an init"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return Options{Blobs: dir, Init: filepath.Join(dir, "init"), TempDir: t.TempDir()}
}

func busybox(t *testing.T) v1.Image {
	img, err := images.Busybox(testenv.Binary(t, "busybox"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestMeasureTemplate: the measurement depends on the template's measured
// parts only: a renamed Deployment with another Secret name measures the
// same, another literal env value does not; an unmanaged template and one
// the webhook refuses (a PVC) are errors that say so.
func TestMeasureTemplate(t *testing.T) {
	testenv.RequireRoot(t)
	opts := fakeBlobs(t)
	img := busybox(t)
	measure := func(manifest string) (string, error) {
		ts, err := Templates([]byte(manifest))
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := Measure(context.Background(), ts[0], img, opts)
		if err != nil {
			return "", err
		}
		if len(m) != 1 || m["app"].PCR0 == "" || m["app"].HashAlgorithm != "Sha384 { ... }" {
			t.Fatalf("measurements = %+v", m)
		}
		return m["app"].PCR0, nil
	}
	base, err := measure(deployment)
	if err != nil {
		t.Fatal(err)
	}
	renamed := strings.NewReplacer("name: web", "name: web2", "name: db,", "name: other-db,").Replace(deployment)
	if got, err := measure(renamed); err != nil || got != base {
		t.Errorf("renamed Deployment with another Secret: PCR0 %s, %v; want %s", got, err, base)
	}
	if got, err := measure(strings.Replace(deployment, "value: prod", "value: staging", 1)); err != nil || got == base {
		t.Errorf("another literal env value: PCR0 %s, %v; want a different one", got, err)
	}
	// The apiserver mounts the service-account token unless the template
	// opts out; its path is in the measured delivery policy.
	noToken := strings.Replace(deployment, "      containers:\n", "      automountServiceAccountToken: false\n      containers:\n", 1)
	if got, err := measure(noToken); err != nil || got == base {
		t.Errorf("automountServiceAccountToken: false: PCR0 %s, %v; want a different one", got, err)
	}
	if _, err := measure(strings.Replace(deployment, `nitro.k8s.anjuna.io/managed: "yes"`, `other: "x"`, 1)); err == nil || !strings.Contains(err.Error(), "lacks the label") {
		t.Errorf("unmanaged template: %v", err)
	}
	pvc := strings.Replace(deployment, "{name: cfg, configMap: {name: cfg}}", "{name: cfg, persistentVolumeClaim: {claimName: data}}", 1)
	if _, err := measure(pvc); err == nil || !strings.Contains(err.Error(), "volume cfg (persistentVolumeClaim) cannot be mounted into an enclave") {
		t.Errorf("PVC: %v", err)
	}
}
