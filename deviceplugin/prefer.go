package deviceplugin

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	"github.com/nitropod/nitropod"

	"github.com/nitropod/nitropod/contract"
)

// core is one core's CPUs that are all available.
type core struct {
	id   int // lowest sibling
	node int
	cpus []int
}

// PreferCPUs picks size CPUs out of available for one container: whole
// cores only, on one NUMA node when one can hold them all, preferring
// hintNode (the node of the container's memory when kubelet allocated that
// first; NoNUMANode for none), then the node with the most free memory
// blocks (freeBlocks by node), then the lowest node id; within a node the
// lowest core ids. mustInclude CPUs are always part of the answer. The
// result is sorted and depends only on the arguments.
func PreferCPUs(cpus map[int]CPU, available, mustInclude []int, size int, freeBlocks map[int]int, hintNode int) ([]int, error) {
	if err := checkCPUCount(cpus, available, size); err != nil {
		return nil, err
	}
	avail := map[int]bool{}
	for _, c := range available {
		avail[c] = true
	}
	for _, c := range mustInclude {
		avail[c] = true
	}
	// Group the available CPUs into whole free cores.
	// Visit CPUs in order so that errors name the same CPU every time.
	byCore := map[int]*core{}
	for _, c := range slices.Sorted(maps.Keys(avail)) {
		cpu, ok := cpus[c]
		if !ok {
			return nil, fmt.Errorf("cpu %d is not in the enclave cpu pool", c)
		}
		whole := true
		for _, s := range cpu.Siblings {
			whole = whole && avail[s]
		}
		if !whole {
			if slices.Contains(mustInclude, c) {
				return nil, fmt.Errorf("cpu %d must be included but its core %s is not free: enclaves get whole cores", c, contract.FormatCPUList(cpu.Siblings))
			}
			continue
		}
		if byCore[cpu.Core()] == nil {
			byCore[cpu.Core()] = &core{id: cpu.Core(), node: cpu.NUMANode, cpus: cpu.Siblings}
		}
	}
	must := map[int]bool{}
	for _, c := range mustInclude {
		must[cpus[c].Core()] = true
	}

	// Rank nodes: those of must-include cores, then the hint, then the most
	// free memory blocks, then the lowest id.
	nodeSet := map[int]bool{}
	mustNode := map[int]bool{}
	for _, co := range byCore {
		nodeSet[co.node] = true
		if must[co.id] {
			mustNode[co.node] = true
		}
	}
	nodes := slices.Collect(maps.Keys(nodeSet))
	slices.SortFunc(nodes, func(a, b int) int {
		return cmp.Or(
			-cmp.Compare(b2i(mustNode[a]), b2i(mustNode[b])),
			-cmp.Compare(b2i(a == hintNode), b2i(b == hintNode)),
			-cmp.Compare(freeBlocks[a], freeBlocks[b]),
			cmp.Compare(a, b))
	})
	// Cores in the order they are taken: must-include first, then by node
	// rank, then by core id.
	rank := map[int]int{}
	for i, n := range nodes {
		rank[n] = i
	}
	ordered := slices.Collect(maps.Values(byCore))
	slices.SortFunc(ordered, func(a, b *core) int {
		return cmp.Or(
			-cmp.Compare(b2i(must[a.id]), b2i(must[b.id])),
			cmp.Compare(rank[a.node], rank[b.node]),
			cmp.Compare(a.id, b.id))
	})

	// One node when the must-include cores allow it and it has room.
	if len(mustNode) <= 1 {
		for _, n := range nodes {
			if len(mustNode) == 1 && !mustNode[n] {
				continue
			}
			if got, ok := takeCores(ordered, size, func(c *core) bool { return c.node == n }); ok {
				return got, nil
			}
		}
	}
	// Otherwise span nodes in rank order, still in whole cores.
	if got, ok := takeCores(ordered, size, func(*core) bool { return true }); ok {
		return got, nil
	}
	return nil, fmt.Errorf("%d enclave cpus requested, but the free cpus %s do not form enough whole cores", size, contract.FormatCPUList(available))
}

// takeCores takes whole cores in order until exactly size CPUs are taken.
func takeCores(ordered []*core, size int, use func(*core) bool) ([]int, bool) {
	var got []int
	for _, c := range ordered {
		if len(got) == size {
			break
		}
		if use(c) && len(got)+len(c.cpus) <= size {
			got = append(got, c.cpus...)
		}
	}
	slices.Sort(got)
	return got, len(got) == size
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// threadsPerCore is the largest core size among cpus (2 with hyperthreads).
func threadsPerCore(cpus map[int]CPU, ids []int) int {
	t := 1
	for _, c := range ids {
		t = max(t, len(cpus[c].Siblings))
	}
	return t
}

// checkCPUCount refuses a CPU count that cannot be whole cores.
func checkCPUCount(cpus map[int]CPU, ids []int, n int) error {
	if n <= 0 {
		return fmt.Errorf("%d enclave cpus requested: request at least one whole core", n)
	}
	if t := threadsPerCore(cpus, ids); n%t != 0 {
		return fmt.Errorf("%d enclave cpus requested, but enclaves get whole cores of %d hyperthreads: set %s (and limits.cpu) to a multiple of %d such as %d",
			n, t, nitropod.ResourceEnclaveCPU, t, (n/t+1)*t)
	}
	return nil
}

// CheckCPUs decides whether kubelet's chosen CPUs may form an enclave: every
// CPU is in the pool and the CPUs are whole cores (so an odd count on a
// hyperthreaded node is refused). The error is the message the Pod's events
// show.
func CheckCPUs(cpus map[int]CPU, ids []int) error {
	for _, c := range ids {
		if _, ok := cpus[c]; !ok {
			return fmt.Errorf("cpu %d is not in the enclave cpu pool", c)
		}
	}
	if err := checkCPUCount(cpus, ids, len(ids)); err != nil {
		return err
	}
	set := map[int]bool{}
	for _, c := range ids {
		set[c] = true
	}
	for _, c := range ids {
		for _, s := range cpus[c].Siblings {
			if !set[s] {
				return fmt.Errorf("enclave cpus %s split core %s (cpu %d without its sibling %d): enclaves get whole cores; enable kubelet's GetPreferredAllocation or free the whole core",
					contract.FormatCPUList(ids), contract.FormatCPUList(cpus[c].Siblings), c, s)
			}
		}
	}
	return nil
}

// PreferMemory picks size memory blocks out of available for one container:
// the mustInclude blocks, then blocks of one NUMA node when one can hold the
// rest: hintNode (the node of the container's CPUs when kubelet allocated
// those first; NoNUMANode for none) if it has room, else the node with the
// most available blocks, then the lowest id; lowest block numbers first.
// When no node has room it spans nodes in that order. The result is sorted
// by node and number and depends only on the arguments.
func PreferMemory(available, mustInclude []Device, size int, hintNode int) []Device {
	taken := map[string]bool{}
	var got []Device
	for _, d := range mustInclude {
		if !taken[d.ID] && len(got) < size {
			taken[d.ID] = true
			got = append(got, d)
		}
	}
	free := map[int][]Device{}
	for _, d := range available {
		if !taken[d.ID] {
			free[d.NUMANode] = append(free[d.NUMANode], d)
		}
	}
	for _, ds := range free {
		slices.SortFunc(ds, func(a, b Device) int { return cmp.Compare(a.Num, b.Num) })
	}
	nodes := slices.Collect(maps.Keys(free))
	need := size - len(got)
	slices.SortFunc(nodes, func(a, b int) int {
		return cmp.Or(
			-cmp.Compare(b2i(a == hintNode && len(free[a]) >= need), b2i(b == hintNode && len(free[b]) >= need)),
			-cmp.Compare(len(free[a]), len(free[b])),
			cmp.Compare(a, b))
	})
	for _, n := range nodes {
		if len(got) == size {
			break
		}
		k := min(size-len(got), len(free[n]))
		got = append(got, free[n][:k]...)
	}
	slices.SortFunc(got, func(a, b Device) int {
		return cmp.Or(cmp.Compare(a.NUMANode, b.NUMANode), cmp.Compare(a.Num, b.Num))
	})
	return got
}
