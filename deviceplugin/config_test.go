package deviceplugin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nitropod/nitropod/deviceplugin/fakesysfs"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Config
		wantErr string
	}{
		{name: "empty", in: "", want: Config{}},
		{name: "sizes", in: "memoryBlockMiB: 128\nenclaveSlots: 2\n", want: Config{MemoryBlockMiB: 128, EnclaveSlots: 2}},
		{name: "pool by count", in: "pool:\n  source: config\n  cpuCount: 4\n  memoryMiB:\n    \"0\": 4096\n  hugepageSize: 1Gi\n",
			want: Config{Pool: PoolConfig{Source: SourceConfig, CPUCount: 4, MemoryMiB: map[string]int{"0": 4096}, HugepageSize: "1Gi"}}},
		{name: "pool by list", in: "pool: {source: config, cpuList: \"2,3,6-7\"}",
			want: Config{Pool: PoolConfig{Source: SourceConfig, CPUList: "2,3,6-7"}}},
		{name: "allocator", in: "pool: {source: allocator, allocatorConfig: /x/allocator.yaml}",
			want: Config{Pool: PoolConfig{Source: SourceAllocator, AllocatorConfig: "/x/allocator.yaml"}}},
		{name: "misspelt key", in: "enclaveSlot: 2\n", wantErr: "unknown field"},
		{name: "negative block", in: "memoryBlockMiB: -1\n", wantErr: "memoryBlockMiB -1 is out of range"},
		{name: "too many slots", in: "enclaveSlots: 5000\n", wantErr: "enclaveSlots 5000 is out of range"},
		{name: "count and list", in: "pool: {source: config, cpuCount: 2, cpuList: \"2-3\"}", wantErr: "keep only one"},
		{name: "bad list", in: "pool: {source: config, cpuList: \"2-\"}", wantErr: "pool cpuList"},
		{name: "bad node", in: "pool: {source: config, memoryMiB: {x: 1}}", wantErr: `memoryMiB key "x" is not a numa node id`},
		{name: "bad source", in: "pool: {source: magic}", wantErr: `pool source "magic" is unknown`},
		{name: "bad page size", in: "pool: {source: config, hugepageSize: 4Ki}", wantErr: `hugepageSize "4Ki" is not supported`},
		{name: "not yaml", in: "[", wantErr: "parsing device plugin config"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseConfig (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseAllocatorConfig(t *testing.T) {
	// The file nitro-enclaves-allocator ships, comments included.
	shipped := `---
# Enclave configuration file.
#
# How much memory to allocate for enclaves (in MiB).
memory_mib: 512
#
# How many CPUs to reserve for enclaves.
cpu_count: 2
#
# Alternatively, the exact CPUs to be reserved for the enclave can be explicitly
# configured by using ` + "`cpu_pool`" + ` (like below), instead of ` + "`cpu_count`" + `.
# Note: cpu_count and cpu_pool conflict with each other. Only use exactly one of them.
# Example of reserving CPUs 2, 3, and 6 through 9:
# cpu_pool: 2,3,6-9
`
	tests := []struct {
		name    string
		in      string
		want    AllocatorConfig
		wantErr string
	}{
		{name: "shipped", in: shipped, want: AllocatorConfig{MemoryMiB: 512, CPUCount: 2}},
		{name: "pool", in: "memory_mib: 1024\ncpu_pool: 2,3,6-9\n", want: AllocatorConfig{MemoryMiB: 1024, CPUPool: "2,3,6-9"}},
		{name: "single cpu as number", in: "cpu_pool: 3\n", want: AllocatorConfig{CPUPool: "3"}},
		{name: "unknown keys ignored", in: "memory_mib: 64\nfuture: 1\n", want: AllocatorConfig{MemoryMiB: 64}},
		{name: "both", in: "cpu_count: 2\ncpu_pool: 2-3\n", wantErr: "keep only one"},
		{name: "negative", in: "memory_mib: -5\n", wantErr: "negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAllocatorConfig([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseAllocatorConfig (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPoolSetup plans and applies pool configurations on fake hosts, then
// rediscovers the node to see what the writes did.
func TestPoolSetup(t *testing.T) {
	tests := []struct {
		name      string
		node      fakesysfs.Node
		pool      PoolConfig
		allocator string
		wantPool  []int
		wantHP    map[int]map[int]int
		wantErr   string
	}{
		{
			name:     "count on one node, memory per node in 2 MiB pages",
			node:     fakesysfs.Node{CPUs: 16, NUMANodes: 2},
			pool:     PoolConfig{Source: SourceConfig, CPUCount: 4, MemoryMiB: map[string]int{"0": 1000, "1": 0}},
			wantPool: []int{1, 2, 9, 10},
			wantHP:   map[int]map[int]int{0: {PageSize2MiB: 500, PageSize1GiB: 0}, 1: {PageSize2MiB: 0, PageSize1GiB: 0}},
		},
		{
			name:     "count larger than node 0 goes to node 1",
			node:     fakesysfs.Node{CPUs: 16, NUMANodes: 2},
			pool:     PoolConfig{Source: SourceConfig, CPUCount: 8},
			wantPool: []int{4, 5, 6, 7, 12, 13, 14, 15},
			wantHP:   map[int]map[int]int{0: {PageSize2MiB: 0, PageSize1GiB: 0}, 1: {PageSize2MiB: 0, PageSize1GiB: 0}},
		},
		{
			name:     "list and 1 GiB pages rounded up",
			node:     fakesysfs.Node{CPUs: 8},
			pool:     PoolConfig{Source: SourceConfig, CPUList: "3,7", MemoryMiB: map[string]int{"0": 1500}, HugepageSize: "1Gi"},
			wantPool: []int{3, 7},
			wantHP:   map[int]map[int]int{0: {PageSize2MiB: 0, PageSize1GiB: 2}},
		},
		{
			name:      "allocator.yaml: memory on the pool's node",
			node:      fakesysfs.Node{CPUs: 16, NUMANodes: 2},
			pool:      PoolConfig{Source: SourceAllocator},
			allocator: "memory_mib: 512\ncpu_pool: 4,12\n",
			wantPool:  []int{4, 12},
			wantHP:    map[int]map[int]int{0: {PageSize2MiB: 0, PageSize1GiB: 0}, 1: {PageSize2MiB: 256, PageSize1GiB: 0}},
		},
		{
			name:      "allocator.yaml as shipped",
			node:      fakesysfs.Node{CPUs: 8},
			pool:      PoolConfig{Source: SourceAllocator},
			allocator: "memory_mib: 512\ncpu_count: 2\n",
			wantPool:  []int{1, 5},
			wantHP:    map[int]map[int]int{0: {PageSize2MiB: 256, PageSize1GiB: 0}},
		},
		{
			name:    "memory away from the pool's node refused",
			node:    fakesysfs.Node{CPUs: 16, NUMANodes: 2},
			pool:    PoolConfig{Source: SourceConfig, CPUCount: 4, MemoryMiB: map[string]int{"0": 512, "1": 64}},
			wantErr: "reserves 64 MiB on numa node 1, but the enclave cpu pool 1-2,9-10 is on node [0]",
		},
		{
			name:    "list spanning numa nodes refused",
			node:    fakesysfs.Node{CPUs: 16, NUMANodes: 2},
			pool:    PoolConfig{Source: SourceConfig, CPUList: "3-4,11-12"},
			wantErr: "spans numa nodes [0 1]: the Nitro Enclaves driver needs the pool on one numa node",
		},
		{
			name:    "list with cpu 0's core refused",
			node:    fakesysfs.Node{CPUs: 8},
			pool:    PoolConfig{Source: SourceConfig, CPUList: "0,4"},
			wantErr: "cpu 0's core",
		},
		{
			name:    "odd count refused",
			node:    fakesysfs.Node{CPUs: 8},
			pool:    PoolConfig{Source: SourceConfig, CPUCount: 3},
			wantErr: "multiple of 2",
		},
		{
			name:    "count too large for any node",
			node:    fakesysfs.Node{CPUs: 8},
			pool:    PoolConfig{Source: SourceConfig, CPUCount: 8},
			wantErr: "no numa node has 8 cpus",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			roots := fakeRoots(t, tc.node)
			inv, err := Discover(roots)
			if err != nil {
				t.Fatal(err)
			}
			plan, err := PlanPool(tc.pool, []byte(tc.allocator), inv)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			changed, err := ApplyPool(roots, plan, inv)
			if err != nil || !changed {
				t.Fatalf("ApplyPool = %t, %v", changed, err)
			}
			after, err := Discover(roots)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantPool, after.Pool); diff != "" {
				t.Errorf("pool (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantHP, after.Hugepages); diff != "" {
				t.Errorf("hugepages (-want +got):\n%s", diff)
			}
			if p := after.Problem(); p != "" {
				t.Errorf("node has a problem after setup: %s", p)
			}
			// Applying the same plan again writes nothing.
			if changed, err := ApplyPool(roots, plan, after); changed || err != nil {
				t.Errorf("second ApplyPool = %t, %v; want no change", changed, err)
			}
		})
	}
}

func TestApplyPoolErrors(t *testing.T) {
	roots := fakeRoots(t, fakesysfs.Node{CPUs: 8})
	inv, err := Discover(roots)
	if err != nil {
		t.Fatal(err)
	}
	// An nr_hugepages that cannot be written (here a directory) fails with
	// a message naming the node, page size and count.
	path := filepath.Join(hugepageDir(roots.Sysfs, 0, PageSize2MiB), "nr_hugepages")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = ApplyPool(roots, &PoolPlan{PageKiB: PageSize2MiB, Pages: map[int]int{0: 10}}, inv)
	if err == nil || !strings.Contains(err.Error(), "reserving 10 hugepages of 2048 kB on numa node 0") {
		t.Errorf("ApplyPool = %v, want a reservation error", err)
	}
	// Without the module, the pool cannot be written.
	inv.ModuleLoaded = false
	if _, err := ApplyPool(roots, &PoolPlan{CPUs: []int{1, 5}}, inv); err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Errorf("ApplyPool without module = %v", err)
	}
}

// FuzzParseConfig feeds arbitrary files to the config parsers: they may
// refuse them but never panic, and an accepted config passes its checks.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"",
		"memoryBlockMiB: 128\nenclaveSlots: 2\n",
		"pool:\n  source: config\n  cpuCount: 4\n  memoryMiB:\n    \"0\": 4096\n",
		"pool: {source: allocator}",
		"memory_mib: 512\ncpu_count: 2\n",
		"cpu_pool: 2,3,6-9\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if c, err := ParseConfig(data); err == nil {
			if err := c.check(); err != nil {
				t.Fatalf("accepted config fails its check: %v", err)
			}
		}
		_, _ = ParseAllocatorConfig(data)
	})
}
