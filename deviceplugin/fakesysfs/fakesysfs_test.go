package fakesysfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWriteLayout(t *testing.T) {
	dir := t.TempDir()
	sys, dev := filepath.Join(dir, "sys"), filepath.Join(dir, "dev")
	n := Node{CPUs: 16, NUMANodes: 2, Pool: "4-7,12-15", Hugepages: map[int]map[int]int{1: {2048: 100, 1048576: 2}}}
	if err := Write(sys, dev, n); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"devices/system/cpu/online":                                            "0-15",
		"devices/system/cpu/cpu5/topology/thread_siblings_list":                "5,13",
		"devices/system/cpu/cpu13/topology/thread_siblings_list":               "5,13",
		"devices/system/cpu/cpu13/topology/core_id":                            "5",
		"devices/system/node/node0/cpulist":                                    "0,1,2,3,8,9,10,11",
		"devices/system/node/node1/cpulist":                                    "4,5,6,7,12,13,14,15",
		"devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages":    "100",
		"devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages": "2",
		"devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages":    "0",
		"module/nitro_enclaves/parameters/ne_cpus":                             "4-7,12-15",
	}
	got := map[string]string{}
	for rel := range want {
		b, err := os.ReadFile(filepath.Join(sys, rel))
		if err != nil {
			t.Fatal(err)
		}
		got[rel] = strings.TrimSpace(string(b))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fake sysfs (-want +got):\n%s", diff)
	}
	if fi, err := os.Stat(filepath.Join(dev, "nitro_enclaves")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("device stand-in: %v %v", fi, err)
	}
}

func TestWriteVariants(t *testing.T) {
	dir := t.TempDir()
	n := Node{CPUs: 4, ThreadsPerCore: 1, NoModule: true, NoDevice: true, NoNUMADirs: true,
		Hugepages: map[int]map[int]int{0: {2048: 8}}}
	if err := Write(filepath.Join(dir, "sys"), filepath.Join(dir, "dev"), n); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"sys/module/nitro_enclaves", "sys/devices/system/node", "dev/nitro_enclaves"} {
		if _, err := os.Stat(filepath.Join(dir, rel)); !os.IsNotExist(err) {
			t.Errorf("%s exists (%v), want it left out", rel, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"))
	if err != nil || strings.TrimSpace(string(b)) != "8" {
		t.Errorf("global hugepages = %q, %v", b, err)
	}
	if got := n.Siblings(2); !cmp.Equal(got, []int{2}) {
		t.Errorf("Siblings(2) without SMT = %v", got)
	}
	if err := Write(t.TempDir(), t.TempDir(), Node{CPUs: 5}); err == nil {
		t.Error("Write accepted 5 cpus in cores of 2")
	}
}
