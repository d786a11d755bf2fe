//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestPlainPods proves the harness alone: unlabelled nginx and busybox Pods
// run through runc, pull through the registry mirror, get a bridge IP, serve
// and log.
func TestPlainPods(t *testing.T) {
	e := startCluster(t, clusterOptions(t, false))
	e.plainNginx()
}

// plainNginx runs an unlabelled nginx Pod as an ordinary container and
// checks its page, its logs and that the webhook left it alone.
func (e *env) plainNginx() {
	t := e.t
	e.mustKubectl(`apiVersion: v1
kind: Pod
metadata:
  name: plain-nginx
  labels: {name: plain-nginx}
spec:
  containers:
  - name: nginx
    image: nginx:latest
    imagePullPolicy: Always
    ports: [{containerPort: 80}]
`, "apply", "-f", "-")
	p := e.waitPod("plain-nginx", 3*time.Minute, "Ready", ready)
	if p.Spec.RuntimeClassName != nil {
		t.Errorf("unlabelled Pod got runtimeClassName %q; want none (ordinary container)", *p.Spec.RuntimeClassName)
	}
	body, err := httpGet(fmt.Sprintf("http://%s:80/", p.Status.PodIP), 30*time.Second)
	if err != nil {
		t.Fatalf("nginx page: %v", err)
	}
	if !strings.Contains(body, "Welcome to nginx!") {
		t.Errorf("GET / = %q; want the nginx welcome page", body)
	}
	logs := e.mustKubectl("", "logs", "plain-nginx")
	if !strings.Contains(logs, `"GET / HTTP/1.1" 200`) {
		t.Errorf("kubectl logs = %q; want nginx's access log line for GET /", logs)
	}
	e.mustKubectl("", "delete", "pod", "plain-nginx", "--wait=false")
	e.waitGone("plain-nginx", 2*time.Minute)
}
