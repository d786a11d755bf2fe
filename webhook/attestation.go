package webhook

import (
	"maps"
	"slices"

	"github.com/nitropod/nitropod/contract"
)

// attestationPort applies the Pod's nitropod.io/attestation-port to every
// enclave: a bad value is refused, and so is a containerPort equal to the
// API's port (the API holds that port on the enclave's loopback, so the app
// could not listen on it).
func (c *converter) attestationPort(enclaves map[string]contract.Enclave) {
	p, err := contract.ParseAttestationPort(c.pod.Annotations[contract.AttestationPortAnnotation])
	if err != nil {
		c.deny("%v", err)
		return
	}
	api := contract.EffectiveAttestationPort(p)
	for _, name := range slices.Sorted(maps.Keys(enclaves)) {
		e := enclaves[name]
		if api != 0 && slices.Contains(e.Ports, int32(api)) {
			c.deny("container %s: containerPort %d is the enclave's attestation API port; set the annotation %s to another port (or \"off\"), or use another containerPort",
				name, api, contract.AttestationPortAnnotation)
		}
		e.AttestationPort = p
		enclaves[name] = e
	}
}
