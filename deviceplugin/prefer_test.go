package deviceplugin

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nitropod/nitropod/deviceplugin/fakesysfs"
)

// topo is the topology of pool in the fake layout of n.
func topo(n fakesysfs.Node, pool []int) map[int]CPU {
	out := map[int]CPU{}
	for _, c := range pool {
		out[c] = CPU{ID: c, Siblings: n.Siblings(c), NUMANode: n.NUMANode(c)}
	}
	return out
}

// twoNodes has 16 CPUs: node 0 holds cores 0-3 (cpus 0-3, 8-11), node 1
// cores 4-7 (cpus 4-7, 12-15). The pool is everything but core {0,8}.
var (
	twoNodes     = fakesysfs.Node{CPUs: 16, NUMANodes: 2}
	twoNodesPool = []int{1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15}
)

func TestPreferCPUs(t *testing.T) {
	cpus := topo(twoNodes, twoNodesPool)
	tests := []struct {
		name       string
		available  []int
		must       []int
		size       int
		freeBlocks map[int]int
		hint       int
		want       []int
		wantErr    string
	}{
		{name: "node with most free memory", available: twoNodesPool, size: 4,
			freeBlocks: map[int]int{0: 10, 1: 20}, hint: NoNUMANode, want: []int{4, 5, 12, 13}},
		{name: "tie goes to the lowest node", available: twoNodesPool, size: 4,
			freeBlocks: map[int]int{0: 5, 1: 5}, hint: NoNUMANode, want: []int{1, 2, 9, 10}},
		{name: "memory's node wins over free blocks", available: twoNodesPool, size: 2,
			freeBlocks: map[int]int{0: 1, 1: 20}, hint: 0, want: []int{1, 9}},
		{name: "hint without room is passed over", available: []int{1, 9, 4, 5, 6, 12, 13, 14}, size: 4,
			freeBlocks: map[int]int{0: 30, 1: 1}, hint: 0, want: []int{4, 5, 12, 13}},
		{name: "must include picks its node", available: twoNodesPool, must: []int{6, 14}, size: 4,
			freeBlocks: map[int]int{0: 30}, hint: NoNUMANode, want: []int{4, 6, 12, 14}},
		{name: "half-free cores are skipped", available: []int{1, 2, 3, 10, 11}, size: 4,
			freeBlocks: nil, hint: NoNUMANode, want: []int{2, 3, 10, 11}},
		{name: "spans nodes only when no node has room, in whole cores", available: []int{1, 2, 3, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15}, size: 10,
			freeBlocks: map[int]int{1: 8}, hint: NoNUMANode, want: []int{1, 4, 5, 6, 7, 9, 12, 13, 14, 15}},
		{name: "odd count refused", available: twoNodesPool, size: 3, hint: NoNUMANode,
			wantErr: "3 enclave cpus requested, but enclaves get whole cores of 2 hyperthreads"},
		{name: "not enough whole cores", available: []int{1, 2, 3, 4}, size: 4, hint: NoNUMANode,
			wantErr: "do not form enough whole cores"},
		{name: "must include of a half-free core", available: []int{1, 2, 10}, must: []int{1}, size: 2, hint: NoNUMANode,
			wantErr: "cpu 1 must be included but its core 1,9 is not free"},
		{name: "unknown cpu", available: []int{0, 8}, size: 2, hint: NoNUMANode,
			wantErr: "cpu 0 is not in the enclave cpu pool"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PreferCPUs(cpus, tc.available, tc.must, tc.size, tc.freeBlocks, tc.hint)
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
				t.Errorf("PreferCPUs (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPreferCPUsProperties checks random requests on a 2-node, 64-CPU host:
// never a split core, one NUMA node whenever one has room, and the same
// answer whatever the order of the available list.
func TestPreferCPUsProperties(t *testing.T) {
	node := fakesysfs.Node{CPUs: 64, NUMANodes: 2}
	var pool []int
	for c := range 64 {
		if c != 0 && c != 32 {
			pool = append(pool, c)
		}
	}
	cpus := topo(node, pool)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		// Free a random subset; allocated cores are taken whole, but a few
		// stray single CPUs stay (as after a refused allocation).
		var available []int
		for _, c := range pool {
			sib := cpus[c].Siblings
			if c == sib[0] && rng.IntN(3) > 0 {
				available = append(available, sib...)
			}
		}
		if rng.IntN(4) == 0 {
			available = append(available, pool[rng.IntN(len(pool))])
		}
		slices.Sort(available)
		available = slices.Compact(available)
		whole := map[int]int{} // free whole-core cpus per node
		total := 0
		for _, c := range available {
			sib := cpus[c].Siblings
			if c == sib[0] && slices.Contains(available, sib[1]) {
				whole[cpus[c].NUMANode] += 2
				total += 2
			}
		}
		if total == 0 {
			continue
		}
		size := 2 * (1 + rng.IntN(total/2))
		free := map[int]int{0: rng.IntN(10), 1: rng.IntN(10)}
		got, err := PreferCPUs(cpus, available, nil, size, free, NoNUMANode)
		if err != nil {
			t.Fatalf("case %d: PreferCPUs(%v, size %d): %v", i, available, size, err)
		}
		if len(got) != size {
			t.Fatalf("case %d: got %d cpus, want %d", i, len(got), size)
		}
		if err := CheckCPUs(cpus, got); err != nil {
			t.Fatalf("case %d: answer %v: %v", i, got, err)
		}
		nodes := numaNodesOf(got, cpus)
		if (whole[0] >= size || whole[1] >= size) && len(nodes) != 1 {
			t.Fatalf("case %d: answer %v spans nodes %v though one node has room (%v)", i, got, nodes, whole)
		}
		for _, c := range got {
			if !slices.Contains(available, c) {
				t.Fatalf("case %d: answer %v has cpu %d, which is not available", i, got, c)
			}
		}
		shuffled := slices.Clone(available)
		rng.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		again, err := PreferCPUs(cpus, shuffled, nil, size, free, NoNUMANode)
		if err != nil || !slices.Equal(again, got) {
			t.Fatalf("case %d: not deterministic: %v then %v (%v)", i, got, again, err)
		}
	}
}

func TestCheckCPUs(t *testing.T) {
	cpus := topo(twoNodes, twoNodesPool)
	tests := []struct {
		ids     []int
		wantErr string
	}{
		{ids: []int{1, 9}},
		{ids: []int{9, 1, 12, 4}},
		{ids: []int{1}, wantErr: "1 enclave cpus requested, but enclaves get whole cores of 2 hyperthreads: set nitropod.io/enclave-cpu (and limits.cpu) to a multiple of 2 such as 2"},
		{ids: []int{1, 2}, wantErr: "enclave cpus 1-2 split core 1,9 (cpu 1 without its sibling 9)"},
		{ids: []int{1, 9, 2}, wantErr: "3 enclave cpus requested"},
		{ids: []int{0, 8}, wantErr: "cpu 0 is not in the enclave cpu pool"},
		{ids: nil, wantErr: "0 enclave cpus requested"},
	}
	for _, tc := range tests {
		err := CheckCPUs(cpus, tc.ids)
		if tc.wantErr == "" && err != nil {
			t.Errorf("CheckCPUs(%v) = %v, want nil", tc.ids, err)
		}
		if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("CheckCPUs(%v) = %v, want an error containing %q", tc.ids, err, tc.wantErr)
		}
	}
}

func TestPreferMemory(t *testing.T) {
	all := concat(memDevs(0, 4), memDevs(1, 6))
	ids := func(ds []Device) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.ID)
		}
		return out
	}
	tests := []struct {
		name      string
		available []Device
		must      []Device
		size      int
		hint      int
		want      []string
	}{
		{name: "most available node", available: all, size: 3, hint: NoNUMANode,
			want: []string{"node1-mem0-64MiB", "node1-mem1-64MiB", "node1-mem2-64MiB"}},
		{name: "cpu's node first", available: all, size: 3, hint: 0,
			want: []string{"node0-mem0-64MiB", "node0-mem1-64MiB", "node0-mem2-64MiB"}},
		{name: "cpu's node without room is passed over", available: all, size: 5, hint: 0,
			want: []string{"node1-mem0-64MiB", "node1-mem1-64MiB", "node1-mem2-64MiB", "node1-mem3-64MiB", "node1-mem4-64MiB"}},
		{name: "lowest free blocks of the node", available: concat(memDevs(0, 4)[2:], memDevs(1, 1)), size: 2, hint: NoNUMANode,
			want: []string{"node0-mem2-64MiB", "node0-mem3-64MiB"}},
		{name: "must include first, then one node", available: all, must: memDevs(0, 1), size: 3, hint: NoNUMANode,
			want: []string{"node0-mem0-64MiB", "node1-mem0-64MiB", "node1-mem1-64MiB"}},
		{name: "spans nodes when it must", available: all, size: 8, hint: 0,
			want: []string{"node0-mem0-64MiB", "node0-mem1-64MiB", "node1-mem0-64MiB", "node1-mem1-64MiB", "node1-mem2-64MiB", "node1-mem3-64MiB", "node1-mem4-64MiB", "node1-mem5-64MiB"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ids(PreferMemory(tc.available, tc.must, tc.size, tc.hint))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("PreferMemory (-want +got):\n%s", diff)
			}
			rev := slices.Clone(tc.available)
			slices.Reverse(rev)
			if again := ids(PreferMemory(rev, tc.must, tc.size, tc.hint)); !slices.Equal(again, got) {
				t.Errorf("not deterministic: %v then %v", got, again)
			}
		})
	}
}
