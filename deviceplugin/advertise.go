package deviceplugin

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

// Settings size the advertised resources.
type Settings struct {
	// MemoryBlockMiB is the requested size of one enclave-memory device;
	// Advertise rounds it up to a multiple of the largest hugepage size in
	// use. Zero means nitropod.DefaultMemoryBlockMiB.
	MemoryBlockMiB int
	// EnclaveSlots is the number of enclave devices. Zero means
	// nitropod.DefaultEnclaveSlots.
	EnclaveSlots int
}

func (s Settings) withDefaults() Settings {
	if s.MemoryBlockMiB <= 0 {
		s.MemoryBlockMiB = nitropod.DefaultMemoryBlockMiB
	}
	if s.EnclaveSlots <= 0 {
		s.EnclaveSlots = nitropod.DefaultEnclaveSlots
	}
	return s
}

// NoNUMANode is Device.NUMANode for devices without topology (slots).
const NoNUMANode = -1

// Device is one advertised device of any of the three resources.
type Device struct {
	// ID is what kubelet sees: "cpu<N>", "node<N>-mem<I>" or "slot<I>".
	ID string
	// Num is the CPU id, the block index within its NUMA node, or the slot
	// number.
	Num int
	// NUMANode is the device's NUMA node, or NoNUMANode.
	NUMANode int
	Healthy  bool
}

// Advertisement is what the plugin tells kubelet, per resource.
type Advertisement struct {
	CPU    []Device
	Memory []Device
	Slots  []Device
	// BlockMiB is the effective size of one memory device.
	BlockMiB int
	// Problem is why the node advertises nothing healthy ("" when it can run
	// enclaves).
	Problem string
}

// Devices returns the device list of one of the three resource names.
func (a Advertisement) Devices(resource string) []Device {
	switch resource {
	case nitropod.ResourceEnclaveCPU:
		return a.CPU
	case nitropod.ResourceEnclaveMemory:
		return a.Memory
	case nitropod.ResourceEnclave:
		return a.Slots
	}
	return nil
}

// BlockMiB is the effective memory block size: the requested size rounded
// up to a multiple of the largest hugepage size with reserved pages, since a
// block smaller than a page cannot be handed out on its own.
func BlockMiB(requested int, hugepages map[int]map[int]int) int {
	if requested <= 0 {
		requested = nitropod.DefaultMemoryBlockMiB
	}
	page := 0
	for _, sizes := range hugepages {
		for kib, n := range sizes {
			if n > 0 && kib/1024 > page {
				page = kib / 1024
			}
		}
	}
	if page <= 1 {
		return requested
	}
	return (requested + page - 1) / page * page
}

// MemoryMiB sums reserved hugepage memory per NUMA node.
func MemoryMiB(hugepages map[int]map[int]int) map[int]int {
	out := map[int]int{}
	for node, sizes := range hugepages {
		kib := 0
		for size, n := range sizes {
			kib += size * n
		}
		out[node] = kib / 1024
	}
	return out
}

// Advertise computes the devices to advertise for inv. Devices in prev that
// are gone now (the pool shrank, hugepages were released, the device node
// vanished) stay in the list as Unhealthy, so kubelet stops counting them as
// allocatable without forgetting running allocations. A node with a Problem
// advertises no healthy device. Pass a zero prev to start afresh.
func Advertise(inv Inventory, s Settings, prev Advertisement) Advertisement {
	s = s.withDefaults()
	a := Advertisement{BlockMiB: BlockMiB(s.MemoryBlockMiB, inv.Hugepages), Problem: inv.Problem()}
	if a.Problem == "" {
		for _, c := range inv.Pool {
			a.CPU = append(a.CPU, Device{ID: contract.CPUDeviceID(c), Num: c, NUMANode: inv.CPUs[c].NUMANode, Healthy: true})
		}
		// Nitro Enclaves take memory only from the NUMA node of their CPUs
		// (the driver refuses other pages), so hugepages of nodes without
		// pool CPUs are not enclave memory.
		poolNodes := numaNodesOf(inv.Pool, inv.CPUs)
		mem := MemoryMiB(inv.Hugepages)
		for _, node := range slices.Sorted(maps.Keys(mem)) {
			if !poolNodes[node] {
				continue
			}
			for i := range mem[node] / a.BlockMiB {
				a.Memory = append(a.Memory, Device{ID: contract.MemoryDeviceID(node, i, a.BlockMiB), Num: i, NUMANode: node, Healthy: true})
			}
		}
		for i := range s.EnclaveSlots {
			a.Slots = append(a.Slots, Device{ID: contract.SlotDeviceID(i), Num: i, NUMANode: NoNUMANode, Healthy: true})
		}
	}
	if prev.BlockMiB != a.BlockMiB {
		// Memory device ids name blocks of the old size: start afresh.
		prev = Advertisement{}
	}
	a.CPU = keepGone(a.CPU, prev.CPU)
	a.Memory = keepGone(a.Memory, prev.Memory)
	a.Slots = keepGone(a.Slots, prev.Slots)
	return a
}

// keepGone adds the devices of prev missing from cur as Unhealthy and sorts
// the result by NUMA node and number.
func keepGone(cur, prev []Device) []Device {
	have := map[string]bool{}
	for _, d := range cur {
		have[d.ID] = true
	}
	for _, d := range prev {
		if !have[d.ID] {
			d.Healthy = false
			cur = append(cur, d)
		}
	}
	slices.SortFunc(cur, func(x, y Device) int {
		return cmp.Or(cmp.Compare(x.NUMANode, y.NUMANode), cmp.Compare(x.Num, y.Num))
	})
	return cur
}

// Summary is a one-line description of an advertisement for logs.
func (a Advertisement) Summary() string {
	return fmt.Sprintf("%d cpus, %d memory blocks of %d MiB, %d slots healthy",
		countHealthy(a.CPU), countHealthy(a.Memory), a.BlockMiB, countHealthy(a.Slots))
}

func countHealthy(ds []Device) int {
	n := 0
	for _, d := range ds {
		if d.Healthy {
			n++
		}
	}
	return n
}
