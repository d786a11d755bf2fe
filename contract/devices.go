package contract

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	nitropod "github.com/nitropod/nitropod"
)

// Device IDs, as the device plugin advertises them and kubelet reports them
// back through its pod-resources API:
//
//	cpu<N>                      enclave-cpu: host CPU N
//	node<N>-mem<I>-<B>MiB       enclave-memory: block I of NUMA node N, B MiB
//	slot<N>                     enclave: slot N
//
// A memory device names its own size, so the shim can total an allocation
// without sharing the device plugin's configuration.

// CPUDeviceID names the enclave-cpu device for host CPU cpu.
func CPUDeviceID(cpu int) string { return "cpu" + strconv.Itoa(cpu) }

// ParseCPUDeviceID returns the host CPU an enclave-cpu device stands for.
func ParseCPUDeviceID(id string) (int, error) {
	n, ok := numberAfter(id, "cpu")
	if !ok || n > MaxCPUID {
		return 0, fmt.Errorf("device %s is not an enclave cpu (want cpu<N>, N ≤ %d)", Clip(id), MaxCPUID)
	}
	return n, nil
}

// MemoryDeviceID names block index of NUMA node node, of blockMiB MiB.
func MemoryDeviceID(node, index, blockMiB int) string {
	return "node" + strconv.Itoa(node) + "-mem" + strconv.Itoa(index) + "-" + strconv.Itoa(blockMiB) + "MiB"
}

// ParseMemoryDeviceID splits an enclave-memory device ID.
func ParseMemoryDeviceID(id string) (node, index, blockMiB int, err error) {
	bad := fmt.Errorf("device %s is not an enclave memory block (want node<N>-mem<I>-<B>MiB)", Clip(id))
	parts := strings.Split(id, "-")
	if len(parts) != 3 {
		return 0, 0, 0, bad
	}
	var ok1, ok2, ok3 bool
	node, ok1 = numberAfter(parts[0], "node")
	index, ok2 = numberAfter(parts[1], "mem")
	blockMiB, ok3 = numberBefore(parts[2], "MiB")
	if !ok1 || !ok2 || !ok3 || blockMiB == 0 || blockMiB > MaxEnclaveMemoryMiB {
		return 0, 0, 0, bad
	}
	return node, index, blockMiB, nil
}

// SlotDeviceID names enclave slot n.
func SlotDeviceID(n int) string { return "slot" + strconv.Itoa(n) }

// ParseSlotDeviceID returns the slot number of an enclave device.
func ParseSlotDeviceID(id string) (int, error) {
	n, ok := numberAfter(id, "slot")
	if !ok {
		return 0, fmt.Errorf("device %s is not an enclave slot (want slot<N>)", Clip(id))
	}
	return n, nil
}

// numberAfter parses s as prefix followed by a decimal number of at most
// nine digits (no sign, no leading +).
func numberAfter(s, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(s, prefix)
	return smallNumber(rest, ok)
}

func numberBefore(s, suffix string) (int, bool) {
	rest, ok := strings.CutSuffix(s, suffix)
	return smallNumber(rest, ok)
}

func smallNumber(s string, ok bool) (int, bool) {
	if !ok || s == "" || len(s) > 9 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// Allocation is what the device plugin gave one container: the enclave's
// size. It is authoritative only when it comes from kubelet's record of the
// allocation (the pod-resources API), never from anything the Pod wrote.
type Allocation struct {
	// CPUIDs are the host CPUs of the enclave, sorted.
	CPUIDs []int
	// MemoryMiB is the enclave memory.
	MemoryMiB int
	// Slot is the enclave slot.
	Slot int
}

// AllocationFromDevices totals the device IDs kubelet assigned to one
// container, keyed by resource name. Every enclave container needs all
// three resources; an allocation missing one, or with devices that are not
// nitropod's, is refused.
func AllocationFromDevices(devices map[string][]string) (Allocation, error) {
	var a Allocation
	cpus := devices[nitropod.ResourceEnclaveCPU]
	mem := devices[nitropod.ResourceEnclaveMemory]
	slots := devices[nitropod.ResourceEnclave]
	var missing []string
	for _, r := range []struct {
		name string
		ids  []string
	}{{nitropod.ResourceEnclaveCPU, cpus}, {nitropod.ResourceEnclaveMemory, mem}, {nitropod.ResourceEnclave, slots}} {
		if len(r.ids) == 0 {
			missing = append(missing, r.name)
		}
	}
	if len(missing) > 0 {
		return a, fmt.Errorf("no %s allocated to the container: an enclave container must request %s, %s and %s (the nitropod webhook adds them from limits.cpu and limits.memory)",
			strings.Join(missing, ", "), nitropod.ResourceEnclaveCPU, nitropod.ResourceEnclaveMemory, nitropod.ResourceEnclave)
	}
	if len(cpus) > MaxEnclaveCPU {
		return a, fmt.Errorf("%d enclave cpus allocated, more than %d", len(cpus), MaxEnclaveCPU)
	}
	seen := map[int]bool{}
	for _, id := range cpus {
		c, err := ParseCPUDeviceID(id)
		if err != nil {
			return a, err
		}
		if !seen[c] {
			seen[c] = true
			a.CPUIDs = append(a.CPUIDs, c)
		}
	}
	slices.Sort(a.CPUIDs)
	block := 0
	blocks := map[string]bool{}
	for _, id := range mem {
		_, _, b, err := ParseMemoryDeviceID(id)
		if err != nil {
			return a, err
		}
		if block != 0 && b != block {
			return a, fmt.Errorf("enclave memory devices of %d and %d MiB in one allocation", block, b)
		}
		block = b
		blocks[id] = true
	}
	total := int64(len(blocks)) * int64(block)
	if total > MaxEnclaveMemoryMiB {
		return a, fmt.Errorf("%d MiB of enclave memory allocated, more than %d", total, MaxEnclaveMemoryMiB)
	}
	a.MemoryMiB = int(total)
	if len(slots) != 1 {
		return a, fmt.Errorf("%d enclave slots allocated: a container runs exactly one enclave (request %s: 1)", len(slots), nitropod.ResourceEnclave)
	}
	n, err := ParseSlotDeviceID(slots[0])
	if err != nil {
		return a, err
	}
	a.Slot = n
	return a, nil
}

// ErrNoPod is returned (wrapped) by allocation sources that have no record
// of the Pod at all.
var ErrNoPod = errors.New("pod not known")
