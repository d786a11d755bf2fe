package deviceplugin

import (
	"path/filepath"
	"testing"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/deviceplugin/fakesysfs"
)

// fakeRoots writes a fake Nitro host (see package fakesysfs) into a
// temporary directory and returns its roots.
func fakeRoots(t testing.TB, n fakesysfs.Node) Roots {
	t.Helper()
	dir := t.TempDir()
	r := Roots{Sysfs: filepath.Join(dir, "sys"), Dev: filepath.Join(dir, "dev")}
	if err := fakesysfs.Write(r.Sysfs, r.Dev, n); err != nil {
		t.Fatal(err)
	}
	return r
}

// pages is a hugepage map for one page size on each node in order.
func pages(kib int, perNode ...int) map[int]map[int]int {
	out := map[int]map[int]int{}
	for node, n := range perNode {
		out[node] = map[int]int{kib: n}
	}
	return out
}

// cpuDevs lists healthy CPU devices with their NUMA node.
func cpuDevs(node int, cpus ...int) []Device {
	var out []Device
	for _, c := range cpus {
		out = append(out, Device{ID: contract.CPUDeviceID(c), Num: c, NUMANode: node, Healthy: true})
	}
	return out
}

// memDevs lists n healthy memory blocks of a node.
func memDevs(node, n int) []Device {
	return memDevsOf(node, n, nitropod.DefaultMemoryBlockMiB)
}

// memDevsOf lists n healthy memory blocks of blockMiB of a node.
func memDevsOf(node, n, blockMiB int) []Device {
	var out []Device
	for i := range n {
		out = append(out, Device{ID: contract.MemoryDeviceID(node, i, blockMiB), Num: i, NUMANode: node, Healthy: true})
	}
	return out
}

func slotDevs(n int) []Device {
	var out []Device
	for i := range n {
		out = append(out, Device{ID: contract.SlotDeviceID(i), Num: i, NUMANode: NoNUMANode, Healthy: true})
	}
	return out
}

func unhealthy(ds []Device) []Device {
	out := make([]Device, len(ds))
	for i, d := range ds {
		d.Healthy = false
		out[i] = d
	}
	return out
}

func concat(dss ...[]Device) []Device {
	var out []Device
	for _, ds := range dss {
		out = append(out, ds...)
	}
	return out
}
