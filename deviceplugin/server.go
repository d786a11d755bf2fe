package deviceplugin

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nitropod/nitropod"

	"github.com/nitropod/nitropod/contract"
)

// Resources are the three extended resources, in registration order.
var Resources = []string{nitropod.ResourceEnclaveCPU, nitropod.ResourceEnclaveMemory, nitropod.ResourceEnclave}

// hintTTL bounds how long the NUMA node of one resource's allocation steers
// the next allocation of the other resource. kubelet allocates a container's
// resources back to back (in map order), so the pair is milliseconds apart.
const hintTTL = 5 * time.Second

// hint is the NUMA node of a recent allocation.
type hint struct {
	node int
	at   time.Time
}

// state is what the three resource services share: the current
// advertisement and the allocation hints between CPUs and memory.
type state struct {
	log     logrus.FieldLogger
	metrics *metrics
	now     func() time.Time

	mu      sync.Mutex
	inv     Inventory
	adv     Advertisement
	api     map[string][]*pluginapi.Device // per resource, built once per change
	byID    map[string]Device              // memory and slot devices by id
	changed chan struct{}                  // closed and replaced on every change
	pool    map[int]CPU                    // topology of the advertised CPUs; nil until needed
	memFree map[int]int                    // free memory blocks per NUMA node as kubelet last said
	cpuHint hint                           // node of the last CPU allocation, not yet paired
	memHint hint                           // node of the last memory allocation, not yet paired
}

func newState(log logrus.FieldLogger, m *metrics) *state {
	return &state{log: log, metrics: m, now: time.Now, changed: make(chan struct{}), api: map[string][]*pluginapi.Device{}}
}

// set publishes a new inventory and advertisement to ListAndWatch streams
// when the device lists differ from the current ones.
func (s *state) set(inv Inventory, adv Advertisement) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inv = inv
	same := s.adv.BlockMiB == adv.BlockMiB && s.adv.Problem == adv.Problem
	for _, r := range Resources {
		same = same && devicesEqual(s.adv.Devices(r), adv.Devices(r))
	}
	if same && s.byID != nil {
		return false
	}
	api := map[string][]*pluginapi.Device{}
	for _, r := range Resources {
		api[r] = toAPI(adv.Devices(r))
	}
	s.adv, s.api, s.pool = adv, api, nil
	s.byID = map[string]Device{}
	free := map[int]int{}
	for _, d := range adv.Memory {
		s.byID[d.ID] = d
		if d.Healthy {
			free[d.NUMANode]++
		}
	}
	for _, d := range adv.Slots {
		s.byID[d.ID] = d
	}
	// Keep what kubelet last said is free, bounded by what exists now.
	if s.memFree == nil {
		s.memFree = free
	} else {
		for n := range s.memFree {
			s.memFree[n] = min(s.memFree[n], free[n])
		}
		for n, f := range free {
			if _, ok := s.memFree[n]; !ok {
				s.memFree[n] = f
			}
		}
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.metrics.advertised(adv, Resources)
	return true
}

func devicesEqual(a, b []Device) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func toAPI(ds []Device) []*pluginapi.Device {
	out := make([]*pluginapi.Device, len(ds))
	for i, d := range ds {
		health := pluginapi.Healthy
		if !d.Healthy {
			health = pluginapi.Unhealthy
		}
		ad := &pluginapi.Device{ID: d.ID, Health: health}
		if d.NUMANode != NoNUMANode {
			ad.Topology = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(d.NUMANode)}}}
		}
		out[i] = ad
	}
	return out
}

// devices returns the current list of resource and a channel closed on the
// next change.
func (s *state) devices(resource string) ([]*pluginapi.Device, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.api[resource], s.changed
}

// hintNode returns the node of a fresh hint; Allocate consumes it (pair).
func (s *state) hintNode(h hint) int {
	if h.at.IsZero() || s.now().Sub(h.at) > hintTTL {
		return NoNUMANode
	}
	return h.node
}

// pair records the node of an allocation: it either completes the other
// resource's pending hint (same container) or becomes a hint itself.
func (s *state) pair(mine, other *hint, nodes map[int]bool) {
	if !other.at.IsZero() && s.now().Sub(other.at) <= hintTTL {
		*other = hint{}
		return
	}
	*mine = hint{}
	if len(nodes) == 1 {
		for n := range nodes {
			*mine = hint{node: n, at: s.now()}
		}
	}
}

// service serves one resource's DevicePlugin gRPC API.
type service struct {
	pluginapi.UnimplementedDevicePluginServer
	resource string
	st       *state
}

// GetDevicePluginOptions is called by kubelet right after registration.
func (v *service) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

// ListAndWatch sends the full device list now and after every change.
func (v *service) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	for {
		devs, changed := v.st.devices(v.resource)
		if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devs}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// GetPreferredAllocation answers kubelet's question which of the available
// devices a container should get.
func (v *service) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, cr := range req.ContainerRequests {
		ids, err := v.prefer(cr.AvailableDeviceIDs, cr.MustIncludeDeviceIDs, int(cr.AllocationSize))
		if err != nil {
			v.st.log.WithFields(logrus.Fields{"resource": v.resource, "size": cr.AllocationSize}).WithError(err).Warn("refusing preferred allocation")
			return nil, status.Error(codes.InvalidArgument, v.resource+": "+err.Error())
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

func (v *service) prefer(available, must []string, size int) ([]string, error) {
	s := v.st
	s.mu.Lock()
	defer s.mu.Unlock()
	switch v.resource {
	case nitropod.ResourceEnclaveCPU:
		av, err := parseCPUDeviceIDs(available)
		if err != nil {
			return nil, err
		}
		mu, err := parseCPUDeviceIDs(must)
		if err != nil {
			return nil, err
		}
		got, err := PreferCPUs(s.poolCPUs(), av, mu, size, s.memFree, s.hintNode(s.memHint))
		if err != nil {
			return nil, err
		}
		ids := make([]string, len(got))
		for i, c := range got {
			ids[i] = contract.CPUDeviceID(c)
		}
		return ids, nil
	default:
		av, err := s.lookup(available)
		if err != nil {
			return nil, err
		}
		mu, err := s.lookup(must)
		if err != nil {
			return nil, err
		}
		hintNode := NoNUMANode
		if v.resource == nitropod.ResourceEnclaveMemory {
			// kubelet's available list is exactly what is free now.
			free := map[int]int{}
			for _, d := range av {
				free[d.NUMANode]++
			}
			s.memFree = free
			hintNode = s.hintNode(s.cpuHint)
		}
		got := PreferMemory(av, mu, size, hintNode)
		ids := make([]string, len(got))
		for i, d := range got {
			ids[i] = d.ID
		}
		return ids, nil
	}
}

// poolCPUs is the topology of the advertised CPUs only, built once per
// change; callers hold s.mu.
func (s *state) poolCPUs() map[int]CPU {
	if s.pool == nil {
		s.pool = s.buildPool()
	}
	return s.pool
}

func (s *state) buildPool() map[int]CPU {
	out := make(map[int]CPU, len(s.adv.CPU))
	for _, d := range s.adv.CPU {
		if cpu, ok := s.inv.CPUs[d.Num]; ok {
			out[d.Num] = cpu
		} else {
			out[d.Num] = CPU{ID: d.Num, Siblings: []int{d.Num}, NUMANode: d.NUMANode}
		}
	}
	return out
}

// lookup maps memory or slot device ids to devices; callers hold s.mu.
func (s *state) lookup(ids []string) ([]Device, error) {
	out := make([]Device, 0, len(ids))
	for _, id := range ids {
		d, ok := s.byID[id]
		if !ok {
			return nil, fmt.Errorf("device %q is not advertised by this plugin", id)
		}
		out = append(out, d)
	}
	return out, nil
}

func parseCPUDeviceIDs(ids []string) ([]int, error) {
	out := make([]int, 0, len(ids))
	for _, id := range ids {
		n, err := contract.ParseCPUDeviceID(id)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// Allocate tells kubelet what each container gets: the NITROPOD_* variables
// for the shim. A refusal's message reaches the Pod's events.
func (v *service) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	start := time.Now()
	resp := &pluginapi.AllocateResponse{}
	for _, cr := range req.ContainerRequests {
		env, err := v.allocate(cr.DevicesIds)
		if err != nil {
			v.st.metrics.allocErrors.WithLabelValues(v.resource).Inc()
			v.st.log.WithFields(logrus.Fields{"resource": v.resource, "devices": strings.Join(cr.DevicesIds, ",")}).WithError(err).Warn("refusing allocation")
			return nil, status.Error(codes.InvalidArgument, v.resource+": "+err.Error())
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{Envs: env})
	}
	v.st.metrics.allocations.WithLabelValues(v.resource).Add(float64(len(req.ContainerRequests)))
	v.st.metrics.allocSeconds.WithLabelValues(v.resource).Observe(time.Since(start).Seconds())
	return resp, nil
}

func (v *service) allocate(ids []string) (map[string]string, error) {
	s := v.st
	s.mu.Lock()
	defer s.mu.Unlock()
	switch v.resource {
	case nitropod.ResourceEnclaveCPU:
		cpus, err := parseCPUDeviceIDs(ids)
		if err != nil {
			return nil, err
		}
		pool := s.poolCPUs()
		if err := CheckCPUs(pool, cpus); err != nil {
			return nil, err
		}
		s.pair(&s.cpuHint, &s.memHint, numaNodesOf(cpus, pool))
		return map[string]string{nitropod.EnvCPUIDs: contract.JoinCPUIDs(cpus)}, nil
	case nitropod.ResourceEnclaveMemory:
		ds, err := s.lookup(ids)
		if err != nil {
			return nil, err
		}
		nodes := map[int]bool{}
		for _, d := range ds {
			nodes[d.NUMANode] = true
			if s.memFree[d.NUMANode] > 0 {
				s.memFree[d.NUMANode]--
			}
		}
		s.pair(&s.memHint, &s.cpuHint, nodes)
		return map[string]string{nitropod.EnvMemoryMiB: strconv.Itoa(len(ds) * s.adv.BlockMiB)}, nil
	default:
		ds, err := s.lookup(ids)
		if err != nil {
			return nil, err
		}
		if len(ds) != 1 {
			return nil, fmt.Errorf("%d enclave slots requested, but a container runs exactly one enclave: request %s: 1", len(ds), nitropod.ResourceEnclave)
		}
		return map[string]string{nitropod.EnvEnclaveSlot: strconv.Itoa(ds[0].Num)}, nil
	}
}

// PreStartContainer is not used (PreStartRequired is false).
func (v *service) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}
