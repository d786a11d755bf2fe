package deviceplugin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/nitropod/nitropod/deviceplugin/fakesysfs"
)

// TestAdvertiseFakeTrees discovers fake hosts and checks the devices each
// one advertises.
func TestAdvertiseFakeTrees(t *testing.T) {
	tests := []struct {
		name     string
		node     fakesysfs.Node
		settings Settings
		want     Advertisement
		// problem is a substring of want.Problem (the message is long).
		problem string
	}{
		{
			name: "one numa node, 2 MiB pages",
			// Cores {0,4} {1,5} {2,6} {3,7}; the pool leaves CPU 0's core.
			node: fakesysfs.Node{CPUs: 8, Pool: "1-3,5-7", Hugepages: pages(PageSize2MiB, 1024)},
			want: Advertisement{
				CPU:      cpuDevs(0, 1, 2, 3, 5, 6, 7),
				Memory:   memDevs(0, 32),
				Slots:    slotDevs(4),
				BlockMiB: 64,
			},
		},
		{
			name: "two numa nodes, 1 GiB pages raise the block size",
			// Node 0: cores 0-3 (cpus 0-3, 8-11); node 1: cores 4-7 (cpus 4-7, 12-15).
			node:     fakesysfs.Node{CPUs: 16, NUMANodes: 2, Pool: "2-7,10-15", Hugepages: pages(PageSize1GiB, 2, 4)},
			settings: Settings{EnclaveSlots: 2},
			want: Advertisement{
				CPU:      concat(cpuDevs(0, 2, 3, 10, 11), cpuDevs(1, 4, 5, 6, 7, 12, 13, 14, 15)),
				Memory:   concat(memDevsOf(0, 2, 1024), memDevsOf(1, 4, 1024)),
				Slots:    slotDevs(2),
				BlockMiB: 1024,
			},
		},
		{
			name: "two numa nodes, 2 MiB pages, custom block size",
			node: fakesysfs.Node{CPUs: 16, NUMANodes: 2, Pool: "4-7,12-15", Hugepages: map[int]map[int]int{
				0: {PageSize2MiB: 0},
				1: {PageSize2MiB: 1000}, // 2000 MiB: 15 blocks of 128 MiB, 80 MiB left over
			}},
			settings: Settings{MemoryBlockMiB: 128},
			want: Advertisement{
				CPU:      cpuDevs(1, 4, 5, 6, 7, 12, 13, 14, 15),
				Memory:   memDevsOf(1, 15, 128),
				Slots:    slotDevs(4),
				BlockMiB: 128,
			},
		},
		{
			name: "hugepages of a node without pool cpus are not enclave memory",
			node: fakesysfs.Node{CPUs: 16, NUMANodes: 2, Pool: "2-3,10-11", Hugepages: pages(PageSize2MiB, 64, 4096)},
			want: Advertisement{
				CPU:      cpuDevs(0, 2, 3, 10, 11),
				Memory:   memDevs(0, 2),
				Slots:    slotDevs(4),
				BlockMiB: 64,
			},
		},
		{
			name: "kernel without numa directories",
			node: fakesysfs.Node{CPUs: 4, Pool: "1,3", NoNUMADirs: true, Hugepages: pages(PageSize2MiB, 64)},
			want: Advertisement{
				CPU:      cpuDevs(0, 1, 3),
				Memory:   memDevs(0, 2),
				Slots:    slotDevs(4),
				BlockMiB: 64,
			},
		},
		{
			name:    "no nitro driver",
			node:    fakesysfs.Node{CPUs: 8, NoModule: true, NoDevice: true, Hugepages: pages(PageSize2MiB, 1024)},
			want:    Advertisement{BlockMiB: 64},
			problem: "nitro_enclaves kernel module is not loaded",
		},
		{
			name:    "module without device node",
			node:    fakesysfs.Node{CPUs: 8, Pool: "1-3,5-7", NoDevice: true, Hugepages: pages(PageSize2MiB, 1024)},
			want:    Advertisement{BlockMiB: 64},
			problem: "/dev/nitro_enclaves does not exist",
		},
		{
			name:    "empty pool",
			node:    fakesysfs.Node{CPUs: 8, Hugepages: pages(PageSize2MiB, 1024)},
			want:    Advertisement{BlockMiB: 64},
			problem: "ne_cpus) is empty",
		},
		{
			name:    "pool with cpu 0's core is refused",
			node:    fakesysfs.Node{CPUs: 8, Pool: "0-1,4-5", Hugepages: pages(PageSize2MiB, 1024)},
			want:    Advertisement{BlockMiB: 64},
			problem: "includes cpu 0 of cpu 0's core 0,4, which the host needs: remove 0,4 from ne_cpus",
		},
		{
			name:    "pool with cpu 0's sibling only is refused",
			node:    fakesysfs.Node{CPUs: 8, Pool: "4", Hugepages: pages(PageSize2MiB, 1024)},
			want:    Advertisement{BlockMiB: 64},
			problem: "includes cpu 4 of cpu 0's core",
		},
		{
			name:    "pool splitting a core is refused",
			node:    fakesysfs.Node{CPUs: 8, Pool: "1-2,5", Hugepages: pages(PageSize2MiB, 1024)},
			want:    Advertisement{BlockMiB: 64},
			problem: "has cpu 2 but not its core sibling 6",
		},
		{
			name:    "pool naming a missing cpu is refused",
			node:    fakesysfs.Node{CPUs: 8, Pool: "1,5,9", Hugepages: pages(PageSize2MiB, 1024)},
			want:    Advertisement{BlockMiB: 64},
			problem: "lists cpu 9, which this node does not have",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := Discover(fakeRoots(t, tc.node))
			if err != nil {
				t.Fatalf("Discover: %v", err)
			}
			got := Advertise(inv, tc.settings, Advertisement{})
			if !strings.Contains(got.Problem, tc.problem) || (tc.problem == "") != (got.Problem == "") {
				t.Errorf("Problem = %q, want it to contain %q", got.Problem, tc.problem)
			}
			got.Problem = ""
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Advertise (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDiscoverTopology(t *testing.T) {
	inv, err := Discover(fakeRoots(t, fakesysfs.Node{CPUs: 16, NUMANodes: 2, Pool: "2-3,10-11",
		Hugepages: map[int]map[int]int{0: {PageSize2MiB: 10, PageSize1GiB: 1}, 1: {PageSize2MiB: 3}}}))
	if err != nil {
		t.Fatal(err)
	}
	want := Inventory{
		ModuleLoaded: true,
		DeviceNode:   true,
		Pool:         []int{2, 3, 10, 11},
		Hugepages: map[int]map[int]int{
			0: {PageSize2MiB: 10, PageSize1GiB: 1},
			1: {PageSize2MiB: 3, PageSize1GiB: 0},
		},
	}
	gotCPUs := inv.CPUs
	inv.CPUs = nil
	if diff := cmp.Diff(want, inv); diff != "" {
		t.Errorf("Discover (-want +got):\n%s", diff)
	}
	for id, want := range map[int]CPU{
		0:  {ID: 0, Siblings: []int{0, 8}, NUMANode: 0},
		11: {ID: 11, Siblings: []int{3, 11}, NUMANode: 0},
		12: {ID: 12, Siblings: []int{4, 12}, NUMANode: 1},
	} {
		if diff := cmp.Diff(want, gotCPUs[id]); diff != "" {
			t.Errorf("cpu %d (-want +got):\n%s", id, diff)
		}
	}
	if len(gotCPUs) != 16 {
		t.Errorf("discovered %d cpus, want 16", len(gotCPUs))
	}
	if got := MemoryMiB(want.Hugepages); !cmp.Equal(got, map[int]int{0: 1044, 1: 6}) {
		t.Errorf("MemoryMiB = %v, want node 0: 1044, node 1: 6", got)
	}
}

// TestDiscoverNUMAFromCPUDirs reads each CPU's node<M> entry when the node
// directories do not list the CPU.
func TestDiscoverNUMAFromCPUDirs(t *testing.T) {
	roots := fakeRoots(t, fakesysfs.Node{CPUs: 8, NUMANodes: 2, Pool: "1,5"})
	if err := os.WriteFile(filepath.Join(roots.Sysfs, "devices/system/node/node1/cpulist"), []byte("\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inv, err := Discover(roots)
	if err != nil {
		t.Fatal(err)
	}
	if got := inv.CPUs[2].NUMANode; got != 1 {
		t.Errorf("cpu 2 on numa node %d, want 1 (from cpu2/node1)", got)
	}
}

func TestDiscoverCorruptFiles(t *testing.T) {
	for _, tc := range []struct {
		file, content string
	}{
		{NECPUsPath, "1-x"},
		{"devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages", "many"},
		{"devices/system/cpu/cpu1/topology/thread_siblings_list", "5-1"},
		{"devices/system/node/node0/cpulist", "0-3,a"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			roots := fakeRoots(t, fakesysfs.Node{CPUs: 8, Pool: "1-3,5-7", Hugepages: pages(PageSize2MiB, 8)})
			if err := os.WriteFile(filepath.Join(roots.Sysfs, tc.file), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := Discover(roots); err == nil {
				t.Errorf("Discover with %s = %q: no error", tc.file, tc.content)
			}
		})
	}
}

// TestAdvertiseHealth follows one node through changes: devices that go away
// stay listed as Unhealthy.
func TestAdvertiseHealth(t *testing.T) {
	node := fakesysfs.Node{CPUs: 8, Pool: "1-3,5-7", Hugepages: pages(PageSize2MiB, 256)}
	roots := fakeRoots(t, node)
	advertise := func(prev Advertisement) Advertisement {
		t.Helper()
		inv, err := Discover(roots)
		if err != nil {
			t.Fatal(err)
		}
		return Advertise(inv, Settings{EnclaveSlots: 2}, prev)
	}
	write := func(rel, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(roots.Sysfs, rel), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := advertise(Advertisement{})
	want := Advertisement{CPU: cpuDevs(0, 1, 2, 3, 5, 6, 7), Memory: memDevs(0, 8), Slots: slotDevs(2), BlockMiB: 64}
	if diff := cmp.Diff(want, a); diff != "" {
		t.Fatalf("start (-want +got):\n%s", diff)
	}

	// The pool shrinks by core {3,7} and hugepages by 128 MiB.
	write(NECPUsPath, "1-2,5-6\n")
	write("devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages", "192\n")
	a = advertise(a)
	want = Advertisement{
		CPU:      concat(cpuDevs(0, 1, 2), unhealthy(cpuDevs(0, 3)), cpuDevs(0, 5, 6), unhealthy(cpuDevs(0, 7))),
		Memory:   concat(memDevs(0, 6), unhealthy(memDevs(0, 8)[6:])),
		Slots:    slotDevs(2),
		BlockMiB: 64,
	}
	if diff := cmp.Diff(want, a); diff != "" {
		t.Fatalf("after shrinking (-want +got):\n%s", diff)
	}

	// The device node vanishes: everything is Unhealthy, nothing forgotten.
	if err := os.Remove(filepath.Join(roots.Dev, DeviceNodeName)); err != nil {
		t.Fatal(err)
	}
	gone := advertise(a)
	if gone.Problem == "" {
		t.Error("no problem reported without the device node")
	}
	gone.Problem = ""
	want = Advertisement{CPU: unhealthy(a.CPU), Memory: unhealthy(a.Memory), Slots: unhealthy(a.Slots), BlockMiB: 64}
	if diff := cmp.Diff(want, gone); diff != "" {
		t.Fatalf("without device node (-want +got):\n%s", diff)
	}

	// It comes back: the current pool is healthy again.
	if err := os.WriteFile(filepath.Join(roots.Dev, DeviceNodeName), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	back := advertise(gone)
	if got := back.Summary(); got != "4 cpus, 6 memory blocks of 64 MiB, 2 slots healthy" {
		t.Errorf("after the device node returned: %s", got)
	}
}

func TestBlockMiB(t *testing.T) {
	tests := []struct {
		name      string
		requested int
		hp        map[int]map[int]int
		want      int
	}{
		{"default", 0, nil, 64},
		{"2 MiB pages keep the request", 100, pages(PageSize2MiB, 10), 100},
		{"odd request rounded to 2 MiB", 65, pages(PageSize2MiB, 10), 66},
		{"1 GiB pages raise 64 MiB", 64, pages(PageSize1GiB, 1), 1024},
		{"1 GiB pages round 1536 up", 1536, pages(PageSize1GiB, 1), 2048},
		{"unused 1 GiB size is ignored", 64, map[int]map[int]int{0: {PageSize1GiB: 0, PageSize2MiB: 4}}, 64},
		{"largest in-use size on any node", 64, map[int]map[int]int{0: {PageSize2MiB: 4}, 1: {PageSize1GiB: 1}}, 1024},
	}
	for _, tc := range tests {
		if got := BlockMiB(tc.requested, tc.hp); got != tc.want {
			t.Errorf("%s: BlockMiB(%d) = %d, want %d", tc.name, tc.requested, got, tc.want)
		}
	}
}
