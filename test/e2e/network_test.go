//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nitropod/nitropod"
)

// TestEnclaveNetworkPods: an enclave app on its Pod's network, with real
// Pods around it. The app fetches a page from a runc Pod (egress with the
// Pod IP as source: nginx logs it), is refused at once by its egress
// allowlist when it tries another runc Pod that is reachable otherwise, and
// serves on a port nobody declared; a client Pod connects to that port and
// the app logs the client's own Pod IP.
func TestEnclaveNetworkPods(t *testing.T) {
	e := startNitroCluster(t)
	e.licence(t, "Network Corp")
	for _, name := range []string{"web", "web2"} {
		e.mustKubectl(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  containers:
  - name: nginx
    image: nginx:latest
    ports: [{containerPort: 80}]
`, name), "apply", "-f", "-")
	}
	web := e.waitPod("web", 3*time.Minute, "Ready", ready)
	web2 := e.waitPod("web2", 3*time.Minute, "Ready", ready)

	script := fmt.Sprintf(`wget -q -O /tmp/a http://%[1]s/ && grep -q 'Welcome to nginx' /tmp/a && echo EGRESS-ALLOWED-OK; `+
		`wget -q -O /tmp/b http://%[2]s/ || echo "EGRESS-REFUSED rc=$?"; `+
		`mkdir -p /tmp/www && echo hello >/tmp/www/index.html && exec httpd -f -vv -p 9999 -h /tmp/www`, web.Status.PodIP, web2.Status.PodIP)
	manifest := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: netapp
  labels:
    nitro.k8s.anjuna.io/managed: "yes"
  annotations:
    nitropod.io/egress-allow: "%s:80"
spec:
  containers:
  - name: app
    image: busybox:latest
    command: ["sh", "-c", %q]
    resources:
      limits: {cpu: "2", memory: 256Mi}
    volumeMounts:
    - {name: anjuna-license, mountPath: /opt/anjuna, readOnly: true}
  volumes:
  - name: anjuna-license
    secret: {secretName: anjuna-license}
`, web.Status.PodIP, script)
	e.applyTimed(manifest, "netapp", "busybox with the enclave network")
	app := e.waitPod("netapp", time.Minute, "Ready", ready)

	e.waitLogs("netapp", "EGRESS-ALLOWED-OK", 5*time.Minute)
	e.waitLogs("netapp", "EGRESS-REFUSED", time.Minute)
	if logs, _ := e.kubectl("", "logs", "netapp"); !strings.Contains(logs, "Connection refused") {
		t.Errorf("the allowlist's refusal is not a connection error in the app's log:\n%s", logs)
	}
	// nginx saw the enclave's request come from the enclave Pod's IP.
	if logs := e.mustKubectl("", "logs", "web"); !strings.Contains(logs, app.Status.PodIP+" ") {
		t.Errorf("web's access log does not show the enclave Pod's IP %s:\n%s", app.Status.PodIP, logs)
	}
	// web2 is reachable from a runc Pod: the refusal was the allowlist's.
	e.mustKubectl(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: netclient
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:latest
    command: ["sh", "-c", "wget -q -O - http://%s/ >/dev/null && echo WEB2-OK; for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://%s:9999/ && echo UNDECLARED-OK && break; sleep 3; done; sleep 3600"]
`, web2.Status.PodIP, app.Status.PodIP), "apply", "-f", "-")
	client := e.waitPod("netclient", 3*time.Minute, "Running", func(p *corev1.Pod) bool { return p.Status.PodIP != "" && phase(p) == "Running" })
	e.waitLogs("netclient", "WEB2-OK", 2*time.Minute)
	e.waitLogs("netclient", "UNDECLARED-OK", 3*time.Minute)
	// busybox httpd -vv logs each client's address: the client Pod's own.
	e.waitLogs("netapp", client.Status.PodIP, time.Minute)
	for _, p := range []string{"netclient", "web", "web2"} {
		e.mustKubectl("", "delete", "pod", p, "--wait=false")
	}
	e.deleteEnclavePod("netapp")
}

// TestEnclaveNameResolution: the app resolves a name the way the container
// would have: /etc/hosts and /etc/resolv.conf inside the enclave are the
// ones kubelet made for the Pod (delivered at start: issue 14), here a
// hostAliases entry for a runc Pod, which the app then fetches over the
// enclave network.
func TestEnclaveNameResolution(t *testing.T) {
	e := startNitroCluster(t)
	e.licence(t, "Resolver Corp")
	e.mustKubectl(`apiVersion: v1
kind: Pod
metadata:
  name: named-web
spec:
  containers:
  - name: nginx
    image: nginx:latest
    ports: [{containerPort: 80}]
`, "apply", "-f", "-")
	web := e.waitPod("named-web", 3*time.Minute, "Ready", ready)
	manifest := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: resolver
  labels:
    nitro.k8s.anjuna.io/managed: "yes"
spec:
  hostAliases:
  - ip: %q
    hostnames: ["web.nitropod.test"]
  containers:
  - name: app
    image: busybox:latest
    command: ["sh", "-c", "cat /etc/hosts; wget -q -O /tmp/p http://web.nitropod.test/ && grep -q 'Welcome to nginx' /tmp/p && echo NAME-OK; sleep 3600"]
    resources:
      limits: {cpu: "2", memory: 256Mi}
    volumeMounts:
    - {name: anjuna-license, mountPath: /opt/anjuna, readOnly: true}
  volumes:
  - name: anjuna-license
    secret: {secretName: anjuna-license}
`, web.Status.PodIP)
	e.applyTimed(manifest, "resolver", "busybox resolving a hostAliases name")
	e.waitLogs("resolver", "NAME-OK", 5*time.Minute)
	e.mustKubectl("", "delete", "pod", "named-web", "--wait=false")
	e.deleteEnclavePod("resolver")
}

// licence issues a day's licence to who and stores it as the Pods' Secret.
func (e *env) licence(t *testing.T, who string) {
	lic := e.issue(t, who, time.Time{}, time.Now().Add(24*time.Hour))
	e.mustKubectl("", "create", "secret", "generic", nitropod.LicenseSecretName, "--from-file="+nitropod.LicenseSecretKey+"="+lic)
}
