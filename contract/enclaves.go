package contract

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
)

// Limits on the nitropod.io/enclaves annotation. They bound the work and
// memory a hostile annotation can cost the shim.
const (
	// MaxEnclavesAnnotationBytes bounds the annotation's length.
	MaxEnclavesAnnotationBytes = 16 << 10
	// MaxEnclavesPerPod bounds the number of entries (Nitro runs at most 4
	// enclaves on a host; the rest is headroom for larger hosts).
	MaxEnclavesPerPod = 16
	// MaxPortsPerEnclave bounds the ports of one entry.
	MaxPortsPerEnclave = 256
	// MaxEnclaveCPU and MaxEnclaveMemoryMiB bound the sizes so that
	// arithmetic on them cannot overflow; both are far above any Nitro host.
	MaxEnclaveCPU       = 1024
	MaxEnclaveMemoryMiB = 64 << 20 // 64 TiB
)

// Enclave is the size and shape of one container's enclave as recorded in
// the nitropod.io/enclaves annotation: a JSON object from app-container name
// to Enclave, for example
//
//	{"nginx":{"cpu":2,"memoryMiB":2048,"ports":[80],"debug":true}}
//
// The webhook writes it; the shim reads the ports and debug flag from it.
// The shim never sizes an enclave from it: the size comes from what the
// device plugin allocated, as kubelet reports it (see Allocation).
type Enclave struct {
	// CPU is the number of vCPUs (even, at least 2).
	CPU int64 `json:"cpu"`
	// MemoryMiB is the enclave memory in MiB (at least MinEnclaveMemoryMiB).
	MemoryMiB int64 `json:"memoryMiB"`
	// Ports are the container's TCP containerPorts.
	Ports []int32 `json:"ports,omitempty"`
	// UDPPorts are the container's UDP containerPorts.
	UDPPorts []int32 `json:"udpPorts,omitempty"`
	// Debug is true for a debug enclave (ANJ_ENCLAVE_DEBUG_MODE=yes).
	Debug bool `json:"debug,omitempty"`
	// AttestationPort is the attestation API's port from the Pod's
	// AttestationPortAnnotation: 0 the default, AttestationPortOff none.
	AttestationPort int `json:"attestationPort,omitempty"`
}

// Validate reports what is wrong with e, naming the container.
func (e Enclave) Validate(container string) error {
	if err := CheckEnclaveCPU(e.CPU); err != nil {
		return fmt.Errorf("enclave of container %q: %w", container, err)
	}
	if err := CheckEnclaveMemoryMiB(e.MemoryMiB); err != nil {
		return fmt.Errorf("enclave of container %q: %w", container, err)
	}
	if len(e.Ports) > MaxPortsPerEnclave {
		return fmt.Errorf("enclave of container %q: %d ports, more than the %d allowed", container, len(e.Ports), MaxPortsPerEnclave)
	}
	if len(e.UDPPorts) > MaxPortsPerEnclave {
		return fmt.Errorf("enclave of container %q: %d UDP ports, more than the %d allowed", container, len(e.UDPPorts), MaxPortsPerEnclave)
	}
	for _, p := range append(append([]int32(nil), e.Ports...), e.UDPPorts...) {
		if p < 1 || p > 65535 {
			return fmt.Errorf("enclave of container %q: port %d is not between 1 and 65535", container, p)
		}
	}
	if err := CheckAttestationPort(e.AttestationPort); err != nil {
		return fmt.Errorf("enclave of container %q: %w", container, err)
	}
	return nil
}

// ParseEnclaves decodes and validates the value of the nitropod.io/enclaves
// annotation.
func ParseEnclaves(s string) (map[string]Enclave, error) {
	if len(s) > MaxEnclavesAnnotationBytes {
		return nil, fmt.Errorf("enclaves annotation is %d bytes, more than the %d allowed", len(s), MaxEnclavesAnnotationBytes)
	}
	var m map[string]Enclave
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("decoding enclaves annotation %s: %w", Clip(s), err)
	}
	if len(m) > MaxEnclavesPerPod {
		return nil, fmt.Errorf("enclaves annotation names %d containers, more than the %d allowed", len(m), MaxEnclavesPerPod)
	}
	// Sorted, so that the error for a bad annotation is the same every time.
	for _, name := range slices.Sorted(maps.Keys(m)) {
		if err := m[name].Validate(name); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// MarshalEnclaves encodes m as the annotation's value. Map keys come out
// sorted, so the value is deterministic.
func MarshalEnclaves(m map[string]Enclave) string {
	// A map of plain structs of integers cannot fail to marshal.
	b, _ := json.Marshal(m)
	return string(b)
}

// Clip shortens a hostile value quoted in an error message.
func Clip(s string) string {
	const max = 64
	if len(s) > max {
		return fmt.Sprintf("%q… (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}
