package webhook

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

// The Pod's attestation-port annotation reaches every enclave entry, which
// is what the shim measures; a containerPort on the API's port is allowed
// once the API moved or is off.
func TestAttestationPortAnnotation(t *testing.T) {
	for v, want := range map[string]int{"": 0, "8443": 8443, "off": contract.AttestationPortOff} {
		pod := basePod()
		pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9910}}
		if v != "" {
			pod.Annotations = map[string]string{contract.AttestationPortAnnotation: v}
		} else {
			pod.Spec.Containers[0].Ports = nil
		}
		out, _, err := Convert(pod, Config{})
		if err != nil {
			t.Fatalf("annotation %q: %v", v, err)
		}
		all, err := contract.ParseEnclaves(out.Annotations[nitropod.EnclavesAnnotation])
		if err != nil {
			t.Fatal(err)
		}
		for name, e := range all {
			if e.AttestationPort != want {
				t.Errorf("annotation %q: container %s has attestation port %d, want %d", v, name, e.AttestationPort, want)
			}
		}
	}
}
