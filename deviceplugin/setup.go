package deviceplugin

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nitropod/nitropod/contract"
)

// PoolPlan is what pool setup writes: the ne_cpus list and nr_hugepages of
// one page size per NUMA node.
type PoolPlan struct {
	// CPUs is the new pool, or nil to leave ne_cpus alone.
	CPUs []int
	// PageKiB is the hugepage size Pages counts.
	PageKiB int
	// Pages is the hugepage count per NUMA node; nodes not listed are left
	// alone.
	Pages map[int]int
}

// PlanPool turns the pool section of the configuration into a plan for this
// node. For SourceAllocator, allocator is allocator.yaml's content; its
// memory goes to the NUMA node of the pool's CPUs, as the allocator does. It
// returns a nil plan for SourceNone.
func PlanPool(p PoolConfig, allocator []byte, inv Inventory) (*PoolPlan, error) {
	pageKiB, err := p.pageKiB()
	if err != nil {
		return nil, err
	}
	var (
		count   int
		list    string
		byNode  map[int]int
		onCPUs  int
		hasMem  bool
		srcName string
	)
	switch p.Source {
	case "", SourceNone:
		return nil, nil
	case SourceConfig:
		count, list, srcName = p.CPUCount, p.CPUList, "pool"
		if byNode, err = p.memoryByNode(); err != nil {
			return nil, err
		}
		hasMem = len(byNode) > 0
	case SourceAllocator:
		a, err := ParseAllocatorConfig(allocator)
		if err != nil {
			return nil, err
		}
		count, list, onCPUs, hasMem, srcName = a.CPUCount, a.CPUPool, a.MemoryMiB, true, "allocator config"
	default:
		return nil, fmt.Errorf("pool source %q is unknown", p.Source)
	}

	plan := &PoolPlan{PageKiB: pageKiB}
	switch {
	case list != "":
		cpus, err := contract.ParseCPUList(list)
		if err != nil {
			return nil, err
		}
		if problem := PoolProblem(cpus, inv.CPUs); problem != "" {
			return nil, fmt.Errorf("%s cpu list: %s", srcName, problem)
		}
		if nodes := numaNodesOf(cpus, inv.CPUs); len(nodes) > 1 {
			return nil, fmt.Errorf("%s cpu list %s spans numa nodes %v: the Nitro Enclaves driver needs the pool on one numa node", srcName, contract.FormatCPUList(cpus), slices.Sorted(maps.Keys(nodes)))
		}
		plan.CPUs = cpus
	case count > 0:
		if plan.CPUs, err = chooseCPUs(count, inv); err != nil {
			return nil, fmt.Errorf("%s cpu count: %w", srcName, err)
		}
	}
	if !hasMem {
		return plan, nil
	}
	pageMiB := pageKiB / 1024
	plan.Pages = map[int]int{}
	if byNode == nil {
		pool := plan.CPUs
		if pool == nil {
			pool = inv.Pool
		}
		if len(pool) == 0 {
			return nil, fmt.Errorf("%s reserves %d MiB but no cpu pool says on which numa node: set cpu_count or cpu_pool", srcName, onCPUs)
		}
		byNode = map[int]int{inv.CPUs[pool[0]].NUMANode: onCPUs}
	}
	pool := plan.CPUs
	if pool == nil {
		pool = inv.Pool
	}
	poolNodes := numaNodesOf(pool, inv.CPUs)
	for _, node := range slices.Sorted(maps.Keys(byNode)) {
		mib := byNode[node]
		if mib > 0 && len(pool) > 0 && !poolNodes[node] {
			return nil, fmt.Errorf("%s reserves %d MiB on numa node %d, but the enclave cpu pool %s is on node %v: enclaves only use memory of their cpus' node, reserve it there", srcName, mib, node, contract.FormatCPUList(pool), slices.Sorted(maps.Keys(poolNodes)))
		}
		plan.Pages[node] = (mib + pageMiB - 1) / pageMiB
	}
	return plan, nil
}

// chooseCPUs picks count CPUs as whole cores on one NUMA node, never CPU 0's
// core: the current pool when it already fits, else the lowest cores of the
// lowest node with room.
func chooseCPUs(count int, inv Inventory) ([]int, error) {
	if len(inv.Pool) == count && PoolProblem(inv.Pool, inv.CPUs) == "" && len(numaNodesOf(inv.Pool, inv.CPUs)) == 1 {
		return inv.Pool, nil
	}
	ids := slices.Sorted(maps.Keys(inv.CPUs))
	if err := checkCPUCount(inv.CPUs, ids, count); err != nil {
		return nil, err
	}
	host := map[int]bool{}
	if cpu0, ok := inv.CPUs[0]; ok {
		for _, s := range cpu0.Siblings {
			host[s] = true
		}
	}
	byNode := map[int][]int{}
	seen := map[int]bool{}
	for _, id := range ids {
		cpu := inv.CPUs[id]
		if host[id] || seen[cpu.Core()] {
			continue
		}
		seen[cpu.Core()] = true
		byNode[cpu.NUMANode] = append(byNode[cpu.NUMANode], cpu.Core())
	}
	for _, node := range slices.Sorted(maps.Keys(byNode)) {
		var got []int
		for _, c := range byNode[node] {
			if len(got) >= count {
				break
			}
			if sib := inv.CPUs[c].Siblings; len(got)+len(sib) <= count {
				got = append(got, sib...)
			}
		}
		if len(got) == count {
			slices.Sort(got)
			return got, nil
		}
	}
	return nil, fmt.Errorf("no numa node has %d cpus in whole cores besides cpu 0's core: ask for fewer cpus", count)
}

func numaNodesOf(cpus []int, topo map[int]CPU) map[int]bool {
	out := map[int]bool{}
	for _, c := range cpus {
		out[topo[c].NUMANode] = true
	}
	return out
}

// ApplyPool writes plan below roots.Sysfs: ne_cpus when it differs, and
// nr_hugepages per node when it differs, checking that the kernel reserved
// every page (it reserves fewer when memory is fragmented). It reports
// whether anything was written.
func ApplyPool(roots Roots, plan *PoolPlan, inv Inventory) (bool, error) {
	if plan == nil {
		return false, nil
	}
	changed := false
	if plan.CPUs != nil && !slices.Equal(plan.CPUs, inv.Pool) {
		if !inv.ModuleLoaded {
			return false, fmt.Errorf("setting the enclave cpu pool: the nitro_enclaves kernel module is not loaded")
		}
		val := contract.FormatCPUList(plan.CPUs)
		if err := os.WriteFile(filepath.Join(roots.Sysfs, NECPUsPath), []byte(val+"\n"), 0o644); err != nil {
			return false, fmt.Errorf("setting the enclave cpu pool to %s (running enclaves keep the pool busy): %w", val, err)
		}
		changed = true
	}
	for _, node := range slices.Sorted(maps.Keys(plan.Pages)) {
		want := plan.Pages[node]
		if inv.Hugepages[node][plan.PageKiB] == want {
			continue
		}
		path := filepath.Join(hugepageDir(roots.Sysfs, node, plan.PageKiB), "nr_hugepages")
		if err := os.WriteFile(path, []byte(strconv.Itoa(want)+"\n"), 0o644); err != nil {
			return changed, fmt.Errorf("reserving %d hugepages of %d kB on numa node %d: %w", want, plan.PageKiB, node, err)
		}
		changed = true
		b, err := os.ReadFile(path)
		if err != nil {
			return changed, fmt.Errorf("reading back hugepages of numa node %d: %w", node, err)
		}
		if got, _ := strconv.Atoi(strings.TrimSpace(string(b))); got < want {
			return changed, fmt.Errorf("the kernel reserved only %d of %d hugepages of %d kB on numa node %d: free memory or reserve hugepages at boot (hugepagesz=/hugepages= kernel parameters)", got, want, plan.PageKiB, node)
		}
	}
	return changed, nil
}
