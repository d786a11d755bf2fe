//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

// TestEnclaveExec runs the scenarios of operating enclave Pods through
// kubectl and kubelet on a cluster of its own: kubectl exec in a debug
// Pod, the refusal of an unmeasured command in a production Pod, exec
// liveness probes that keep a production Pod Ready or restart it.
func TestEnclaveExec(t *testing.T) {
	e := startNitroClusterPool(t, lifecyclePool)
	lic := e.issue(t, "Exec Corp", time.Time{}, time.Now().Add(24*time.Hour))
	e.mustKubectl("", "create", "secret", "generic", nitropod.LicenseSecretName, "--from-file="+nitropod.LicenseSecretKey+"="+lic)

	t.Run("kubectl exec in a debug Pod", func(t *testing.T) {
		e.sub(t).execDebug()
	})
	t.Run("a production Pod refuses an unmeasured command and runs its probe's", func(t *testing.T) {
		e.sub(t).execProduction()
	})
	t.Run("a failing exec liveness probe restarts the enclave container", func(t *testing.T) {
		e.sub(t).livenessRestart()
	})
}

// execPod is a busybox enclave Pod; extra is YAML under the container
// (indented four spaces), ann extra annotations.
func execPod(name string, debug bool, ann map[string]string, extra string) string {
	meta := ""
	if len(ann) > 0 {
		meta = "  annotations:\n"
		for k, v := range ann {
			meta += fmt.Sprintf("    %s: %q\n", k, v)
		}
	}
	env := ""
	if debug {
		env = fmt.Sprintf("    env:\n    - {name: %s, value: %q}\n", nitropod.DebugModeEnv, nitropod.DebugModeValue)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels:
    nitro.k8s.anjuna.io/managed: "yes"
%sspec:
  containers:
  - name: app
    image: busybox:latest
    command: ["sh", "-c", "echo healthy > /tmp/healthy; exec sleep 3600"]
    workingDir: /etc
    resources:
      limits: {cpu: "2", memory: 256Mi}
    volumeMounts:
    - {name: anjuna-license, mountPath: /opt/anjuna, readOnly: true}
%s%s  volumes:
  - name: anjuna-license
    secret: {secretName: anjuna-license}
`, name, meta, env, extra)
}

func (e *env) execDebug() {
	t := e.t
	const name = "exec-debug"
	e.applyTimed(execPod(name, true, nil, ""), name, "debug enclave for exec")
	defer e.deleteEnclavePod(name)
	// The app runs in the enclave: wait for the file its command writes.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := e.kubectl("", "exec", name, "--", "cat", "/tmp/healthy")
		if err == nil && out == "healthy\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl exec cat /tmp/healthy: %v %q", err, out)
		}
		time.Sleep(2 * time.Second)
	}
	out, err := e.kubectl("", "exec", name, "--", "sh", "-c", "echo cwd=$(pwd) debug=$"+nitropod.DebugModeEnv+"; exit 3")
	if err == nil || !strings.Contains(err.Error(), "exit code 3") {
		t.Errorf("kubectl exec … exit 3: %v, want exit code 3", err)
	}
	if out != "cwd=/etc debug="+nitropod.DebugModeValue+"\n" {
		t.Errorf("kubectl exec output %q: want the app's working directory and environment", out)
	}
	out, err = e.kubectl("hello from stdin\n", "exec", "-i", name, "--", "sh", "-c", "read l; echo got:$l")
	if err != nil || out != "got:hello from stdin\n" {
		t.Errorf("kubectl exec -i: %v %q", err, out)
	}
}

func (e *env) execProduction() {
	t := e.t
	const name = "exec-prod"
	probe := `    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 3
      timeoutSeconds: 10
      failureThreshold: 2
    readinessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 3
      timeoutSeconds: 10
`
	ann := map[string]string{contract.ExecCommandsAnnotation: `{"app":[["sh","-c","echo extra-allowed"]]}`}
	e.applyTimed(execPod(name, false, ann, probe), name, "production enclave with exec probes")
	defer e.deleteEnclavePod(name)
	out, err := e.kubectl("", "exec", name, "--", "sh")
	if err == nil || !strings.Contains(err.Error(), "production enclaves run only measured commands") || !strings.Contains(err.Error(), contract.ExecCommandsAnnotation) {
		t.Errorf("kubectl exec sh in a production Pod: %v %q; want the refusal", err, out)
	}
	if out, err := e.kubectl("", "exec", name, "--", "sh", "-c", "echo extra-allowed"); err != nil || out != "extra-allowed\n" {
		t.Errorf("the author's listed command: %v %q", err, out)
	}
	if out, err := e.kubectl("", "exec", name, "--", "cat", "/tmp/healthy"); err != nil || out != "healthy\n" {
		t.Errorf("the probe's command by kubectl exec: %v %q", err, out)
	}
	// The probes keep passing: Ready, never restarted, for 30 s (10 periods).
	until := time.Now().Add(30 * time.Second)
	for time.Now().Before(until) {
		p, err := e.pod(name)
		if err != nil {
			t.Fatal(err)
		}
		if !ready(p) || restarts(p) != 0 {
			desc, _ := e.kubectl("", "describe", "pod", name)
			t.Fatalf("a production Pod with a passing exec probe: ready %v, restarts %d\n%s", ready(p), restarts(p), desc)
		}
		time.Sleep(3 * time.Second)
	}
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

func (e *env) livenessRestart() {
	t := e.t
	const name = "exec-liveness"
	probe := `    livenessProbe:
      exec: {command: ["cat", "/tmp/missing"]}
      initialDelaySeconds: 5
      periodSeconds: 3
      timeoutSeconds: 10
      failureThreshold: 1
`
	e.mustKubectl(execPod(name, false, nil, probe), "apply", "-f", "-")
	defer e.deleteEnclavePod(name)
	// kubelet's own account: the probe failed, it killed the container for
	// it, and the container ran again (a restart for another reason, such
	// as a failed start, does not count).
	deadline := time.Now().Add(5 * time.Minute)
	var desc string
	for time.Now().Before(deadline) {
		desc, _ = e.kubectl("", "describe", "pod", name)
		p, err := e.pod(name)
		if err == nil && strings.Contains(desc, "Liveness probe failed") &&
			strings.Contains(desc, "failed liveness probe, will be restarted") && restarts(p) >= 1 {
			return
		}
		time.Sleep(2 * time.Second)
	}
	t.Errorf("no restart by the failing liveness probe within 5 minutes:\n%s", desc)
}
