package contract

import (
	"fmt"

	nitropod "github.com/nitropod/nitropod"
)

// CheckEnclaveCPU reports whether n vCPUs is a size a Nitro enclave can
// have: an even number (whole cores, as Nitro requires on hosts with SMT),
// at least 2.
func CheckEnclaveCPU(n int64) error {
	if n < 2 || n%2 != 0 || n > MaxEnclaveCPU {
		return fmt.Errorf("cpu %d is not an even number of vCPUs between 2 and %d", n, MaxEnclaveCPU)
	}
	return nil
}

// CheckEnclaveMemoryMiB reports whether an enclave of mib MiB can boot:
// at least nitropod.MinEnclaveMemoryMiB.
func CheckEnclaveMemoryMiB(mib int64) error {
	if mib < nitropod.MinEnclaveMemoryMiB || mib > MaxEnclaveMemoryMiB {
		return fmt.Errorf("memoryMiB %d is not between %d and %d", mib, nitropod.MinEnclaveMemoryMiB, MaxEnclaveMemoryMiB)
	}
	return nil
}
