package webhook

import (
	"encoding/json"
	"fmt"
)

// Enclave is the size and shape of one container's enclave as recorded in
// the nitropod.io/enclaves annotation.
type Enclave struct {
	// CPU is the number of vCPUs (even, at least 2).
	CPU int64 `json:"cpu"`
	// MemoryMiB is the enclave memory in MiB, a whole number of memory blocks.
	MemoryMiB int64 `json:"memoryMiB"`
	// Ports are the container's TCP containerPorts.
	Ports []int32 `json:"ports,omitempty"`
	// Debug is true for a debug enclave (ANJ_ENCLAVE_DEBUG_MODE=yes).
	Debug bool `json:"debug,omitempty"`
}

// ParseEnclaves decodes the value of the nitropod.io/enclaves annotation and
// checks that every entry is a size an enclave can have.
func ParseEnclaves(s string) (map[string]Enclave, error) {
	var m map[string]Enclave
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("decoding enclaves annotation: %w", err)
	}
	for name, e := range m {
		if e.CPU < 2 || e.CPU%2 != 0 {
			return nil, fmt.Errorf("enclave of container %q: cpu %d is not an even number ≥ 2", name, e.CPU)
		}
		if e.MemoryMiB < minMemoryMiB {
			return nil, fmt.Errorf("enclave of container %q: memoryMiB %d is below %d", name, e.MemoryMiB, minMemoryMiB)
		}
		for _, p := range e.Ports {
			if p < 1 || p > 65535 {
				return nil, fmt.Errorf("enclave of container %q: port %d out of range", name, p)
			}
		}
	}
	return m, nil
}

func marshalEnclaves(m map[string]Enclave) string {
	// Map keys come out sorted, so the value is deterministic; a map of
	// plain structs of integers cannot fail to marshal.
	b, _ := json.Marshal(m)
	return string(b)
}
