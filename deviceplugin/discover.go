package deviceplugin

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nitropod/nitropod/contract"
)

// Paths below a sysfs root and a /dev root that discovery reads and pool
// setup writes (see the kernel's Documentation/virt/ne_overview.rst and
// Documentation/admin-guide/mm/hugetlbpage.rst).
const (
	// NECPUsPath is the Nitro Enclaves driver's CPU pool parameter, relative
	// to the sysfs root.
	NECPUsPath = "module/nitro_enclaves/parameters/ne_cpus"
	// neModulePath exists when the nitro_enclaves module is loaded.
	neModulePath = "module/nitro_enclaves"
	cpuDir       = "devices/system/cpu"
	nodeDir      = "devices/system/node"
	// globalHugepagesDir is used when the kernel has no NUMA node directories.
	globalHugepagesDir = "kernel/mm/hugepages"
	// DeviceNodeName is the Nitro Enclaves device below the /dev root.
	DeviceNodeName = "nitro_enclaves"
)

// Page sizes of x86_64 hugepages in KiB, the two sizes Nitro Enclaves use.
const (
	PageSize2MiB = 2048
	PageSize1GiB = 1048576
)

// Roots are the file-system roots that discovery reads and pool setup
// writes: "/sys" and "/dev" on a real node, fake trees in tests.
type Roots struct {
	Sysfs string
	Dev   string
}

// CPU is one host CPU's topology.
type CPU struct {
	ID int
	// Siblings are the hardware threads of this CPU's core, sorted,
	// including ID itself.
	Siblings []int
	// NUMANode is the NUMA node the CPU belongs to (0 without NUMA).
	NUMANode int
}

// Core identifies the CPU's core by its lowest sibling id.
func (c CPU) Core() int { return c.Siblings[0] }

// Inventory is what a node offers for enclaves, as read from sysfs and /dev.
type Inventory struct {
	// ModuleLoaded reports whether the nitro_enclaves driver is loaded.
	ModuleLoaded bool
	// DeviceNode reports whether /dev/nitro_enclaves exists.
	DeviceNode bool
	// Pool is the enclave CPU pool (ne_cpus), sorted.
	Pool []int
	// CPUs holds the topology of every CPU sysfs lists, by id.
	CPUs map[int]CPU
	// Hugepages counts reserved hugepages by NUMA node and page size in KiB
	// (nr_hugepages).
	Hugepages map[int]map[int]int
}

// Discover reads the enclave CPU pool, CPU topology, hugepages and the
// device node below roots. A node without Nitro support is not an error: the
// returned Inventory says what is missing and Problem explains it. Errors are
// returned only for files that exist but cannot be read or parsed.
func Discover(roots Roots) (Inventory, error) {
	inv := Inventory{CPUs: map[int]CPU{}, Hugepages: map[int]map[int]int{}}

	if _, err := os.Stat(filepath.Join(roots.Sysfs, neModulePath)); err == nil {
		inv.ModuleLoaded = true
	}
	if inv.ModuleLoaded {
		b, err := os.ReadFile(filepath.Join(roots.Sysfs, NECPUsPath))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return Inventory{}, fmt.Errorf("reading enclave cpu pool: %w", err)
		default:
			if inv.Pool, err = contract.ParseCPUList(string(b)); err != nil {
				return Inventory{}, fmt.Errorf("reading enclave cpu pool: %w", err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(roots.Dev, DeviceNodeName)); err == nil {
		inv.DeviceNode = true
	}

	nodeOf, err := readNUMANodes(roots.Sysfs)
	if err != nil {
		return Inventory{}, err
	}
	cpuDirs, err := filepath.Glob(filepath.Join(roots.Sysfs, cpuDir, "cpu[0-9]*"))
	if err != nil {
		return Inventory{}, fmt.Errorf("listing cpus: %w", err)
	}
	for _, d := range cpuDirs {
		id, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "cpu"))
		if err != nil {
			continue // cpufreq, cpuidle, …
		}
		sib, err := readSiblings(d)
		if err != nil {
			return Inventory{}, fmt.Errorf("reading topology of cpu %d: %w", id, err)
		}
		if !slices.Contains(sib, id) {
			sib = append(sib, id)
			slices.Sort(sib)
		}
		node, ok := cpuNodeLink(d)
		if !ok {
			node = nodeOf[id]
		}
		inv.CPUs[id] = CPU{ID: id, Siblings: sib, NUMANode: node}
	}

	if err := readHugepages(roots.Sysfs, inv.Hugepages); err != nil {
		return Inventory{}, err
	}
	return inv, nil
}

// readSiblings reads a CPU's core siblings; an offline CPU or an old kernel
// without topology files counts as a core of its own.
func readSiblings(cpuPath string) ([]int, error) {
	for _, name := range []string{"topology/thread_siblings_list", "topology/core_cpus_list"} {
		b, err := os.ReadFile(filepath.Join(cpuPath, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return contract.ParseCPUList(string(b))
	}
	return nil, nil
}

// cpuNodeLink reads the NUMA node from the cpu<N>/node<M> entry that NUMA
// kernels put in each CPU's directory.
func cpuNodeLink(cpuPath string) (int, bool) {
	links, _ := filepath.Glob(filepath.Join(cpuPath, "node[0-9]*"))
	if len(links) != 1 {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(links[0]), "node"))
	return n, err == nil
}

// readNUMANodes maps CPU ids to NUMA nodes from node*/cpulist. CPUs of a
// kernel without NUMA directories map to node 0 (the zero value).
func readNUMANodes(sysfs string) (map[int]int, error) {
	nodes, err := numaNodeDirs(sysfs)
	if err != nil {
		return nil, err
	}
	nodeOf := map[int]int{}
	for n, dir := range nodes {
		b, err := os.ReadFile(filepath.Join(dir, "cpulist"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading cpus of numa node %d: %w", n, err)
		}
		cpus, err := contract.ParseCPUList(string(b))
		if err != nil {
			return nil, fmt.Errorf("reading cpus of numa node %d: %w", n, err)
		}
		for _, c := range cpus {
			nodeOf[c] = n
		}
	}
	return nodeOf, nil
}

// numaNodeDirs lists node<N> directories by node id.
func numaNodeDirs(sysfs string) (map[int]string, error) {
	dirs, err := filepath.Glob(filepath.Join(sysfs, nodeDir, "node[0-9]*"))
	if err != nil {
		return nil, fmt.Errorf("listing numa nodes: %w", err)
	}
	out := map[int]string{}
	for _, d := range dirs {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "node"))
		if err != nil {
			continue
		}
		out[n] = d
	}
	return out, nil
}

// readHugepages fills counts[node][pageKiB] from each node's hugepages
// directory, or from the global one (as node 0) without NUMA directories.
func readHugepages(sysfs string, counts map[int]map[int]int) error {
	nodes, err := numaNodeDirs(sysfs)
	if err != nil {
		return err
	}
	if len(nodes) == 0 {
		nodes = map[int]string{0: filepath.Join(sysfs, filepath.Dir(globalHugepagesDir))}
	}
	for n, dir := range nodes {
		sizes, err := filepath.Glob(filepath.Join(dir, "hugepages", "hugepages-*kB"))
		if err != nil {
			return fmt.Errorf("listing hugepages of numa node %d: %w", n, err)
		}
		for _, s := range sizes {
			kib, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(s), "hugepages-"), "kB"))
			if err != nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join(s, "nr_hugepages"))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("reading %d kB hugepages of numa node %d: %w", kib, n, err)
			}
			nr, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || nr < 0 {
				return fmt.Errorf("reading %d kB hugepages of numa node %d: %q is not a page count", kib, n, strings.TrimSpace(string(b)))
			}
			if counts[n] == nil {
				counts[n] = map[int]int{}
			}
			counts[n][kib] = nr
		}
	}
	return nil
}

// hugepageDir is the directory whose nr_hugepages pool setup writes.
func hugepageDir(sysfs string, node, pageKiB int) string {
	return filepath.Join(sysfs, nodeDir, "node"+strconv.Itoa(node), "hugepages", "hugepages-"+strconv.Itoa(pageKiB)+"kB")
}

// Problem says why this node cannot run enclaves, or returns "" when it can.
// The message names what is wrong and how to fix it; it goes to the log and
// the nitropod_deviceplugin_unsupported metric.
func (inv Inventory) Problem() string {
	switch {
	case !inv.ModuleLoaded:
		return "the nitro_enclaves kernel module is not loaded (no Nitro Enclaves support on this node; enable enclaves on the instance and load the module)"
	case !inv.DeviceNode:
		return "the device node /dev/" + DeviceNodeName + " does not exist (load the nitro_enclaves module or fix --dev-root)"
	case len(inv.Pool) == 0:
		return "the enclave cpu pool (ne_cpus) is empty: set it with nitro-enclaves-allocator or a pool section in " + "the device plugin's config"
	}
	return PoolProblem(inv.Pool, inv.CPUs)
}

// PoolProblem checks a CPU pool the way the Nitro Enclaves driver does: every
// CPU exists, CPU 0's core is not in the pool (the host needs it), and every
// core is in the pool whole. It returns "" for a valid pool.
func PoolProblem(pool []int, cpus map[int]CPU) string {
	inPool := map[int]bool{}
	for _, c := range pool {
		inPool[c] = true
	}
	for _, c := range pool {
		cpu, ok := cpus[c]
		if !ok {
			return fmt.Sprintf("enclave cpu pool %s lists cpu %d, which this node does not have: fix ne_cpus", contract.FormatCPUList(pool), c)
		}
		if cpu0, ok := cpus[0]; ok && slices.Contains(cpu0.Siblings, c) {
			return fmt.Sprintf("enclave cpu pool %s includes cpu %d of cpu 0's core %s, which the host needs: remove %s from ne_cpus", contract.FormatCPUList(pool), c, contract.FormatCPUList(cpu0.Siblings), contract.FormatCPUList(cpu0.Siblings))
		}
		for _, s := range cpu.Siblings {
			if !inPool[s] {
				return fmt.Sprintf("enclave cpu pool %s has cpu %d but not its core sibling %d: add or remove the whole core %s", contract.FormatCPUList(pool), c, s, contract.FormatCPUList(cpu.Siblings))
			}
		}
	}
	return ""
}
