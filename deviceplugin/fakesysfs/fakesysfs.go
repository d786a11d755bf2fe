// Package fakesysfs writes fake sysfs and /dev trees that look like an AWS
// Nitro Enclaves host to the device plugin's discovery: CPU topology, NUMA
// nodes, hugepages, the nitro_enclaves module's ne_cpus parameter and a
// stand-in for /dev/nitro_enclaves. It is a fake because no Nitro hardware
// exists where the tests and the end-to-end cluster run; the layout follows
// the kernel's sysfs ABI (Documentation/ABI/stable/sysfs-devices-system-cpu,
// sysfs-devices-node, sysfs-kernel-mm-hugepages).
package fakesysfs

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Node is a fake host.
type Node struct {
	// CPUs is the number of host CPUs (hardware threads).
	CPUs int
	// ThreadsPerCore is 2 on hyperthreaded x86 hosts (the default), 1 on
	// Graviton.
	ThreadsPerCore int
	// NUMANodes splits the cores evenly over this many nodes (default 1).
	NUMANodes int
	// Pool is ne_cpus in cpu-list syntax ("2,3,6,7"); empty means an empty
	// pool.
	Pool string
	// Hugepages is nr_hugepages by NUMA node and page size in KiB.
	Hugepages map[int]map[int]int
	// NoModule leaves out the nitro_enclaves module directory.
	NoModule bool
	// NoDevice leaves out the /dev/nitro_enclaves stand-in.
	NoDevice bool
	// NoNUMADirs leaves out devices/system/node (a kernel without NUMA); the
	// hugepages of node 0 then go to kernel/mm/hugepages.
	NoNUMADirs bool
}

// Siblings returns the ids of the threads of CPU id's core in the fake
// layout: like EC2, CPU c and CPU c+cores share a core.
func (n Node) Siblings(id int) []int {
	t := n.threads()
	cores := n.CPUs / t
	core := id % cores
	out := make([]int, t)
	for i := range t {
		out[i] = core + i*cores
	}
	return out
}

// NUMANode returns the fake NUMA node of CPU id.
func (n Node) NUMANode(id int) int {
	cores := n.CPUs / n.threads()
	perNode := max(cores/n.numa(), 1)
	return min((id%cores)/perNode, n.numa()-1)
}

func (n Node) threads() int {
	if n.ThreadsPerCore <= 0 {
		return 2
	}
	return n.ThreadsPerCore
}
func (n Node) numa() int { return max(n.NUMANodes, 1) }

// Write creates the fake trees: sysfs below sysfsRoot and the device node
// stand-in (a regular file) below devRoot.
func Write(sysfsRoot, devRoot string, n Node) error {
	if n.ThreadsPerCore == 0 {
		n.ThreadsPerCore = 2
	}
	if n.CPUs <= 0 || n.CPUs%n.ThreadsPerCore != 0 {
		return fmt.Errorf("writing fake sysfs: %d cpus are not whole cores of %d threads", n.CPUs, n.ThreadsPerCore)
	}
	w := writer{root: sysfsRoot}
	all := "0-" + strconv.Itoa(n.CPUs-1)
	w.file("devices/system/cpu/online", all)
	w.file("devices/system/cpu/possible", all)
	w.file("devices/system/cpu/present", all)
	cores := n.CPUs / n.ThreadsPerCore
	nodeCPUs := map[int][]string{}
	for id := range n.CPUs {
		dir := "devices/system/cpu/cpu" + strconv.Itoa(id)
		sib := n.Siblings(id)
		s := make([]string, len(sib))
		for i, c := range sib {
			s[i] = strconv.Itoa(c)
		}
		w.file(dir+"/topology/thread_siblings_list", strings.Join(s, ","))
		w.file(dir+"/topology/core_cpus_list", strings.Join(s, ","))
		w.file(dir+"/topology/core_id", strconv.Itoa(id%cores))
		w.file(dir+"/topology/physical_package_id", strconv.Itoa(n.NUMANode(id)))
		nodeCPUs[n.NUMANode(id)] = append(nodeCPUs[n.NUMANode(id)], strconv.Itoa(id))
		if !n.NoNUMADirs {
			w.symlink("../../node/node"+strconv.Itoa(n.NUMANode(id)), dir+"/node"+strconv.Itoa(n.NUMANode(id)))
		}
	}
	if n.NoNUMADirs {
		for kib, nr := range n.Hugepages[0] {
			w.hugepages("kernel/mm/hugepages", kib, nr)
		}
	} else {
		for node := range n.numa() {
			dir := "devices/system/node/node" + strconv.Itoa(node)
			w.file(dir+"/cpulist", strings.Join(nodeCPUs[node], ","))
			for _, kib := range []int{2048, 1048576} {
				w.hugepages(dir+"/hugepages", kib, n.Hugepages[node][kib])
			}
		}
	}
	if !n.NoModule {
		w.file("module/nitro_enclaves/parameters/ne_cpus", n.Pool)
	}
	if w.err == nil && !n.NoDevice {
		w.err = os.MkdirAll(devRoot, 0o755)
		if w.err == nil {
			w.err = os.WriteFile(filepath.Join(devRoot, "nitro_enclaves"), nil, 0o644)
		}
	}
	if w.err != nil {
		return fmt.Errorf("writing fake sysfs: %w", w.err)
	}
	return nil
}

type writer struct {
	root string
	err  error
}

func (w *writer) file(rel, content string) {
	if w.err != nil {
		return
	}
	p := filepath.Join(w.root, rel)
	if w.err = os.MkdirAll(filepath.Dir(p), 0o755); w.err == nil {
		w.err = os.WriteFile(p, []byte(content+"\n"), 0o644)
	}
}

func (w *writer) symlink(target, rel string) {
	if w.err != nil {
		return
	}
	w.err = os.Symlink(target, filepath.Join(w.root, rel))
}

func (w *writer) hugepages(dir string, kib, nr int) {
	d := dir + "/hugepages-" + strconv.Itoa(kib) + "kB"
	w.file(d+"/nr_hugepages", strconv.Itoa(nr))
	w.file(d+"/free_hugepages", strconv.Itoa(nr))
}
