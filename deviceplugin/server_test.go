package deviceplugin

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nitropod/nitropod"
)

// newTestServices serves twoNodeHost's advertisement through the three
// services directly (no sockets) with a settable clock.
func newTestServices(t *testing.T) (map[string]*service, *time.Time) {
	t.Helper()
	inv, err := Discover(fakeRoots(t, twoNodeHost))
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	st := newState(log, newMetrics())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st.now = func() time.Time { return now }
	st.set(inv, Advertise(inv, Settings{}, Advertisement{}))
	out := map[string]*service{}
	for _, r := range Resources {
		out[r] = &service{resource: r, st: st}
	}
	return out, &now
}

func prefer(t *testing.T, s *service, available []string, size int) []string {
	t.Helper()
	resp, err := s.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: available, AllocationSize: int32(size)}}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.ContainerResponses[0].DeviceIDs
}

func allocate(t *testing.T, s *service, ids []string) map[string]string {
	t.Helper()
	resp, err := s.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.ContainerResponses[0].Envs
}

func allMemoryIDs() []string {
	var ids []string
	for _, d := range concat(memDevs(0, 16), memDevs(1, 32)) {
		ids = append(ids, d.ID)
	}
	return ids
}

var allCPUIDs = []string{"cpu2", "cpu3", "cpu10", "cpu11", "cpu4", "cpu5", "cpu6", "cpu7", "cpu12", "cpu13", "cpu14", "cpu15"}

// TestCPUsFollowMemory: kubelet allocates memory first (its map order), then
// CPUs; the CPUs go to the memory's node although the other has more free
// blocks by then.
func TestCPUsFollowMemory(t *testing.T) {
	svc, _ := newTestServices(t)
	mem, cpu := svc[nitropod.ResourceEnclaveMemory], svc[nitropod.ResourceEnclaveCPU]
	// kubelet says node 1 has only 4 free blocks left, node 0 all 16.
	avail := allMemoryIDs()[:20]
	got := prefer(t, mem, avail, 8)
	if diff := cmp.Diff(allMemoryIDs()[:8], got); diff != "" {
		t.Fatalf("memory (-want +got):\n%s", diff)
	}
	allocate(t, mem, got)
	// Node 0 now has 8 free blocks, node 1 4: the hint decides either way,
	// so make node 1 look better by its blocks to be sure the hint wins.
	cpu.st.mu.Lock()
	cpu.st.memFree = map[int]int{0: 1, 1: 30}
	cpu.st.mu.Unlock()
	if diff := cmp.Diff([]string{"cpu2", "cpu3", "cpu10", "cpu11"}, prefer(t, cpu, allCPUIDs, 4)); diff != "" {
		t.Errorf("cpus (-want +got):\n%s", diff)
	}
	allocate(t, cpu, []string{"cpu2", "cpu3", "cpu10", "cpu11"})
	// The pair is complete: the next container's CPUs follow free memory.
	if diff := cmp.Diff([]string{"cpu4", "cpu5", "cpu12", "cpu13"}, prefer(t, cpu, allCPUIDs[4:], 4)); diff != "" {
		t.Errorf("next container's cpus (-want +got):\n%s", diff)
	}
}

// TestHintExpires: a CPU allocation steers memory only for hintTTL.
func TestHintExpires(t *testing.T) {
	svc, now := newTestServices(t)
	mem, cpu := svc[nitropod.ResourceEnclaveMemory], svc[nitropod.ResourceEnclaveCPU]
	allocate(t, cpu, []string{"cpu2", "cpu10"}) // node 0
	if diff := cmp.Diff([]string{"node0-mem0-64MiB"}, prefer(t, mem, allMemoryIDs(), 1)); diff != "" {
		t.Errorf("memory right after the cpus (-want +got):\n%s", diff)
	}
	*now = now.Add(hintTTL + time.Second)
	// Too late to be the same container: the node with most free blocks.
	if diff := cmp.Diff([]string{"node1-mem0-64MiB"}, prefer(t, mem, allMemoryIDs(), 1)); diff != "" {
		t.Errorf("memory after the hint expired (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{nitropod.EnvMemoryMiB: "64"}, allocate(t, mem, []string{"node1-mem0-64MiB"})); diff != "" {
		t.Errorf("Allocate (-want +got):\n%s", diff)
	}
}

func TestListAndWatchFollowsChanges(t *testing.T) {
	svc, _ := newTestServices(t)
	st := svc[nitropod.ResourceEnclave].st
	devs, changed := st.devices(nitropod.ResourceEnclave)
	if len(devs) != 4 {
		t.Fatalf("%d slots, want 4", len(devs))
	}
	// The same advertisement again is no change.
	st.mu.Lock()
	inv, adv := st.inv, st.adv
	st.mu.Unlock()
	if st.set(inv, adv) {
		t.Error("set with the same advertisement reported a change")
	}
	select {
	case <-changed:
		t.Fatal("watchers woken without a change")
	default:
	}
	adv.Slots = adv.Slots[:2]
	if !st.set(inv, adv) {
		t.Error("set with fewer slots reported no change")
	}
	select {
	case <-changed:
	default:
		t.Fatal("watchers not woken by a change")
	}
	if devs, _ := st.devices(nitropod.ResourceEnclave); len(devs) != 2 {
		t.Errorf("%d slots after the change, want 2", len(devs))
	}
}
