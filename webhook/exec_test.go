package webhook

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

// TestConvertExecCommands: the enclave's exec list holds the container's
// exec probes and postStart/preStop exec hooks, each once, then the
// commands the author lists for it; HTTP and TCP probes add nothing.
func TestConvertExecCommands(t *testing.T) {
	pod := basePod()
	c := &pod.Spec.Containers[0]
	c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "/tmp/healthy"}}}}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "/tmp/healthy"}}}}
	c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/"}}}
	c.Lifecycle = &corev1.Lifecycle{
		PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "touch /tmp/started"}}},
		PreStop:   &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"/bin/app", "drain"}}},
	}
	pod.Annotations = map[string]string{contract.ExecCommandsAnnotation: `{"nginx-pod":[["nginx","-s","reload"],["/bin/app","drain"]]}`}
	got, _, err := Convert(pod, Config{})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"nginx-pod":{"cpu":2,"memoryMiB":2048,"exec":[["cat","/tmp/healthy"],["sh","-c","touch /tmp/started"],["/bin/app","drain"],["nginx","-s","reload"]]}}`
	if g := got.Annotations[nitropod.EnclavesAnnotation]; g != want {
		t.Errorf("enclaves = %s\nwant       %s", g, want)
	}
	all, err := contract.ParseEnclaves(got.Annotations[nitropod.EnclavesAnnotation])
	if err != nil {
		t.Fatalf("the shim cannot read what the webhook wrote: %v", err)
	}
	if p := (&contract.ExecPolicy{Commands: all["nginx-pod"].Exec}); !p.Allows([]string{"cat", "/tmp/healthy"}) || p.Allows([]string{"cat", "/etc/shadow"}) {
		t.Errorf("policy from the annotation allows the wrong commands: %v", p.Commands)
	}
}

// TestConvertExecCommandsDenied: a bad or oversized author list is refused
// with the reason.
func TestConvertExecCommandsDenied(t *testing.T) {
	many := `{"nginx-pod":[` + strings.TrimSuffix(strings.Repeat(`["true"],`, contract.MaxExecCommands+1), ",") + `]}`
	for name, tc := range map[string]struct{ ann, want string }{
		"not JSON":          {`[["true"]]`, "write a JSON object from container name"},
		"unknown container": {`{"other":[["true"]]}`, `container "other", which the Pod does not have`},
		"empty argv":        {`{"nginx-pod":[[]]}`, "needs at least argv[0]"},
		"long argument":     {`{"nginx-pod":[["echo","` + strings.Repeat("x", contract.MaxExecArgBytes+1) + `"]]}`, "more than the 4096 allowed"},
		"too many":          {many, "exec commands, more than the 64 allowed"},
		"too large":         {`{"a":"` + strings.Repeat("x", contract.MaxExecCommandsAnnotationBytes) + `"}`, "more than the 65536 allowed"},
	} {
		t.Run(name, func(t *testing.T) {
			pod := basePod()
			pod.Annotations = map[string]string{contract.ExecCommandsAnnotation: tc.ann}
			_, _, err := Convert(pod, Config{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Convert: %v, want an error with %q", err, tc.want)
			}
		})
	}
}
