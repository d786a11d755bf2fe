package deviceplugin

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/deviceplugin/fakesysfs"
)

// reregisterLimit bounds re-registering after a kubelet restart. It is a
// generous bound that catches a registrar stuck until a rescan or a
// retry storm, not a performance target: the measured times are logged
// (go test -v). Under -race on two shared cores one registration can take
// hundreds of milliseconds.
const reregisterLimit = 10 * time.Second

// twoNodeHost is a fake 16-CPU host: node 0 holds cores 0-3 (cpus 0-3,
// 8-11), node 1 cores 4-7 (cpus 4-7, 12-15); 1 GiB of 2 MiB pages on node
// 0 and 2 GiB on node 1.
var twoNodeHost = fakesysfs.Node{CPUs: 16, NUMANodes: 2, Pool: "2-7,10-15", Hugepages: pages(PageSize2MiB, 512, 1024)}

type runningPlugin struct {
	metrics string
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
}

// startPlugin runs Run in the background with fast rescans; the cleanup
// stops it and checks it returned nil.
func startPlugin(t *testing.T, roots Roots, pluginDir, configPath string) *runningPlugin {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	if testing.Verbose() {
		log.SetOutput(os.Stderr)
	}
	return startPluginLog(t, roots, pluginDir, configPath, log)
}

// startPluginLog is startPlugin with Run's logger.
func startPluginLog(t *testing.T, roots Roots, pluginDir, configPath string, log logrus.FieldLogger) *runningPlugin {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &runningPlugin{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan string, 1)
	go func() {
		p.done <- Run(ctx, Options{Roots: roots, PluginDir: pluginDir, ConfigPath: configPath,
			MetricsAddr: "127.0.0.1:0", RescanInterval: 100 * time.Millisecond, Log: log,
			Ready: func(addr string) { ready <- addr }})
	}()
	select {
	case p.metrics = <-ready:
	case err := <-p.done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not become ready within 10s")
	}
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *runningPlugin) stop(t *testing.T) {
	p.once.Do(func() {
		p.cancel()
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not stop within 10s of cancel")
		}
	})
}

func (p *runningPlugin) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + p.metrics + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitMetric polls /metrics until it has line.
func (p *runningPlugin) waitMetric(t *testing.T, line string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := p.get(t, "/metrics")
		if strings.Contains(body, line+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics has no line %q within 5s:\n%s", line, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCounter polls /metrics until the unlabelled series name is at least
// min (a counter may count a refused reload more than once).
func (p *runningPlugin) waitCounter(t *testing.T, name string, min float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := p.get(t, "/metrics")
		for _, l := range strings.Split(body, "\n") {
			var v float64
			if rest, ok := strings.CutPrefix(l, name+" "); ok {
				if _, err := fmt.Sscan(rest, &v); err == nil && v >= min {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics: %s does not reach %v within 5s:\n%s", name, min, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func deviceIDs(devs []*pluginapi.Device) []string {
	var out []string
	for _, d := range devs {
		out = append(out, d.ID)
	}
	return out
}

// TestRegistrationAndKubeletRestart runs the plugin before kubelet exists,
// lets the kubelet stub come up, then restarts kubelet the way kubelet does
// (its socket and every plugin socket deleted, kubelet.sock created again)
// and measures the time to re-register; at the end the plugin stops and
// removes its sockets.
func TestRegistrationAndKubeletRestart(t *testing.T) {
	dir := t.TempDir()
	p := startPlugin(t, fakeRoots(t, twoNodeHost), dir, filepath.Join(dir, "absent.yaml"))

	start := time.Now()
	k := startKubeletStub(t, dir)
	regs := k.waitRegistrations(t, 5*time.Second)
	for _, r := range regs {
		if d := r.at.Sub(start); d > reregisterLimit {
			t.Errorf("%s registered %v after kubelet came up, want < %v", r.resource, d, reregisterLimit)
		}
		if !r.options.GetPreferredAllocationAvailable {
			t.Errorf("%s: GetPreferredAllocationAvailable is false", r.resource)
		}
	}
	cpu := regs[nitropod.ResourceEnclaveCPU].devices
	wantCPU := []string{"cpu2", "cpu3", "cpu10", "cpu11", "cpu4", "cpu5", "cpu6", "cpu7", "cpu12", "cpu13", "cpu14", "cpu15"}
	if diff := cmp.Diff(wantCPU, deviceIDs(cpu)); diff != "" {
		t.Errorf("cpu devices (-want +got):\n%s", diff)
	}
	for _, d := range cpu {
		wantNode := int64(0)
		if d.ID == "cpu4" || d.ID >= "cpu12" && len(d.ID) == 5 || d.ID == "cpu5" || d.ID == "cpu6" || d.ID == "cpu7" {
			wantNode = 1
		}
		if d.Health != pluginapi.Healthy || d.Topology == nil || len(d.Topology.Nodes) != 1 || d.Topology.Nodes[0].ID != wantNode {
			t.Errorf("cpu device %v: want Healthy on numa node %d", d, wantNode)
		}
	}
	if n := len(regs[nitropod.ResourceEnclaveMemory].devices); n != 48 {
		t.Errorf("%d memory devices, want 16 + 32", n)
	}
	if n := len(regs[nitropod.ResourceEnclave].devices); n != nitropod.DefaultEnclaveSlots {
		t.Errorf("%d slot devices, want %d", n, nitropod.DefaultEnclaveSlots)
	}
	// The stub records a registration when the request arrives; the plugin
	// counts itself registered only when kubelet's answer is back, so wait
	// for every resource before reading /healthz.
	for _, r := range Resources {
		p.waitMetric(t, `nitropod_deviceplugin_registered{resource="`+r+`"} 1`)
	}
	p.waitMetric(t, `nitropod_deviceplugin_capacity{resource="nitropod.io/enclave-cpu"} 12`)
	p.waitMetric(t, `nitropod_deviceplugin_allocatable{resource="nitropod.io/enclave-memory"} 48`)
	p.waitMetric(t, `nitropod_deviceplugin_nitro_supported 1`)
	if code, body := p.get(t, "/healthz"); code != http.StatusOK || strings.Contains(body, "registered=false") || strings.Count(body, "serving=true registered=true") != len(Resources) {
		t.Errorf("/healthz = %d %q", code, body)
	}

	// kubelet restarts three times: stop, clean the directory, listen again.
	for i := range 3 {
		// The stub has seen the registrations; wait until the plugin has
		// seen kubelet's answers too.
		for _, r := range Resources {
			p.waitMetric(t, `nitropod_deviceplugin_registered{resource="`+r+`"} 1`)
		}
		k.stop()
		// kubelet deletes every socket in the directory when it starts;
		// the second restart leaves them, so only kubelet.sock's creation
		// tells the plugin.
		for _, r := range Resources {
			if i == 1 {
				break
			}
			if err := os.Remove(filepath.Join(dir, SocketName(r))); err != nil {
				t.Fatalf("restart %d: removing %s: %v", i, SocketName(r), err)
			}
		}
		restarted := time.Now()
		k = startKubeletStub(t, dir)
		regs := k.waitRegistrations(t, 5*time.Second)
		for _, r := range regs {
			took := r.at.Sub(restarted)
			t.Logf("restart %d: %s re-registered after %v", i, r.resource, took)
			if took > reregisterLimit {
				t.Errorf("restart %d: %s re-registered after %v, want < %v", i, r.resource, took, reregisterLimit)
			}
		}
		if diff := cmp.Diff(wantCPU, deviceIDs(regs[nitropod.ResourceEnclaveCPU].devices)); diff != "" {
			t.Errorf("restart %d: cpu devices (-want +got):\n%s", i, diff)
		}
	}
	for _, r := range Resources {
		// One registration per kubelet start, no extra ones.
		p.waitMetric(t, `nitropod_deviceplugin_registrations_total{resource="`+r+`"} 4`)
	}

	p.stop(t)
	for _, r := range Resources {
		if _, err := os.Stat(filepath.Join(dir, SocketName(r))); !os.IsNotExist(err) {
			t.Errorf("socket %s left behind after stop: %v", SocketName(r), err)
		}
	}
}

// refusingKubelet is a kubelet Registration service that refuses every
// plugin.
type refusingKubelet struct {
	pluginapi.UnimplementedRegistrationServer
}

func (refusingKubelet) Register(context.Context, *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	return nil, status.Error(codes.Unavailable, "kubelet is not ready")
}

// TestRegisteredLoggedOnlyWhenAccepted: "registered with kubelet" (what the
// e2e tier waits for after a kubelet restart) is logged only once kubelet
// accepted the registration, never for an attempt it refused.
func TestRegisteredLoggedOnlyWhenAccepted(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, KubeletSocketName))
	if err != nil {
		t.Fatal(err)
	}
	refusing := grpc.NewServer()
	pluginapi.RegisterRegistrationServer(refusing, refusingKubelet{})
	go func() { _ = refusing.Serve(ln) }()
	log, hook := logtest.NewNullLogger()
	count := func(msg string) int {
		n := 0
		for _, e := range hook.AllEntries() {
			if e.Message == msg {
				n++
			}
		}
		return n
	}
	p := startPluginLog(t, fakeRoots(t, twoNodeHost), dir, filepath.Join(dir, "absent.yaml"), log)
	for deadline := time.Now().Add(5 * time.Second); count("registering with kubelet, retrying") < len(Resources); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the plugin did not try to register with the refusing kubelet within 5s")
		}
	}
	if n := count("registered with kubelet"); n != 0 {
		t.Errorf("%d \"registered with kubelet\" lines while kubelet refused every registration", n)
	}
	// A kubelet that accepts: one line per resource.
	refusing.Stop()
	if err := os.Remove(filepath.Join(dir, KubeletSocketName)); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	startKubeletStub(t, dir).waitRegistrations(t, 10*time.Second)
	for _, r := range Resources {
		p.waitMetric(t, `nitropod_deviceplugin_registered{resource="`+r+`"} 1`)
	}
	if n := count("registered with kubelet"); n != len(Resources) {
		t.Errorf("%d \"registered with kubelet\" lines after kubelet accepted the %d resources", n, len(Resources))
	}
}

// TestAllocateOverGRPC drives the preferred-allocation and Allocate calls a
// kubelet makes for one container through the registered plugin.
func TestAllocateOverGRPC(t *testing.T) {
	dir := t.TempDir()
	k := startKubeletStub(t, dir)
	p := startPlugin(t, fakeRoots(t, twoNodeHost), dir, "")
	k.waitRegistrations(t, 5*time.Second)
	ctx := context.Background()
	cpuClient := k.client(nitropod.ResourceEnclaveCPU)
	memClient := k.client(nitropod.ResourceEnclaveMemory)
	slotClient := k.client(nitropod.ResourceEnclave)

	allIDs := func(resource string) []string {
		return deviceIDs(k.waitDevices(t, resource, "devices", func(d []*pluginapi.Device) bool { return len(d) > 0 }))
	}
	// CPUs first: node 1 has the most free memory blocks (32 vs 16).
	pref, err := cpuClient.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: allIDs(nitropod.ResourceEnclaveCPU), AllocationSize: 4}}})
	if err != nil {
		t.Fatal(err)
	}
	gotCPUs := pref.ContainerResponses[0].DeviceIDs
	if diff := cmp.Diff([]string{"cpu4", "cpu5", "cpu12", "cpu13"}, gotCPUs); diff != "" {
		t.Errorf("preferred cpus (-want +got):\n%s", diff)
	}
	alloc, err := cpuClient.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"cpu13", "cpu4", "cpu12", "cpu5"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{nitropod.EnvCPUIDs: "4,5,12,13"}, alloc.ContainerResponses[0].Envs); diff != "" {
		t.Errorf("cpu Allocate envs (-want +got):\n%s", diff)
	}
	// Memory follows the CPUs to node 1 even when node 0 is listed first.
	mem, err := memClient.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: allIDs(nitropod.ResourceEnclaveMemory), AllocationSize: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"node1-mem0-64MiB", "node1-mem1-64MiB", "node1-mem2-64MiB"}, mem.ContainerResponses[0].DeviceIDs); diff != "" {
		t.Errorf("preferred memory (-want +got):\n%s", diff)
	}
	alloc, err = memClient.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: mem.ContainerResponses[0].DeviceIDs}}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{nitropod.EnvMemoryMiB: "192"}, alloc.ContainerResponses[0].Envs); diff != "" {
		t.Errorf("memory Allocate envs (-want +got):\n%s", diff)
	}
	alloc, err = slotClient.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"slot2"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{nitropod.EnvEnclaveSlot: "2"}, alloc.ContainerResponses[0].Envs); diff != "" {
		t.Errorf("slot Allocate envs (-want +got):\n%s", diff)
	}

	// Refusals carry a message for the Pod's events.
	for _, tc := range []struct {
		client pluginapi.DevicePluginClient
		ids    []string
		want   string
	}{
		{cpuClient, []string{"cpu4"}, "nitropod.io/enclave-cpu: 1 enclave cpus requested, but enclaves get whole cores of 2 hyperthreads"},
		{cpuClient, []string{"cpu4", "cpu5", "cpu12"}, "3 enclave cpus requested"},
		{cpuClient, []string{"cpu4", "cpu5"}, "split core 4,12 (cpu 4 without its sibling 12)"},
		{cpuClient, []string{"cpu0", "cpu8"}, "cpu 0 is not in the enclave cpu pool"},
		{slotClient, []string{"slot0", "slot1"}, "a container runs exactly one enclave"},
		{memClient, []string{"node7-mem0-64MiB"}, `device "node7-mem0-64MiB" is not advertised`},
	} {
		_, err := tc.client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: tc.ids}}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Errorf("Allocate(%v) = %v, want InvalidArgument containing %q", tc.ids, err, tc.want)
		}
	}
	_, err = cpuClient.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: allIDs(nitropod.ResourceEnclaveCPU), AllocationSize: 3}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "whole cores") {
		t.Errorf("GetPreferredAllocation of 3 cpus = %v, want a refusal", err)
	}
	p.waitMetric(t, `nitropod_deviceplugin_allocations_total{resource="nitropod.io/enclave-cpu"} 1`)
	p.waitMetric(t, `nitropod_deviceplugin_allocation_errors_total{resource="nitropod.io/enclave-cpu"} 4`)
}

// TestHealthAndReload changes the fake host and the config file under a
// running plugin and watches the ListAndWatch stream follow.
func TestHealthAndReload(t *testing.T) {
	dir := t.TempDir()
	roots := fakeRoots(t, twoNodeHost)
	cfgDir := filepath.Join(dir, "etc")
	if err := os.Mkdir(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(cfgDir, "device-plugin.yaml")
	k := startKubeletStub(t, dir)
	p := startPlugin(t, roots, dir, cfg)
	k.waitRegistrations(t, 5*time.Second)

	// The device node vanishes: every device turns Unhealthy.
	devNode := filepath.Join(roots.Dev, DeviceNodeName)
	if err := os.Remove(devNode); err != nil {
		t.Fatal(err)
	}
	for _, r := range Resources {
		k.waitDevices(t, r, "every device Unhealthy", func(d []*pluginapi.Device) bool { return len(d) > 0 && healthyCount(d) == 0 })
	}
	p.waitMetric(t, `nitropod_deviceplugin_nitro_supported 0`)
	_, body := p.get(t, "/metrics")
	if !strings.Contains(body, `nitropod_deviceplugin_unsupported{reason="the device node /dev/nitro_enclaves does not exist`) {
		t.Errorf("/metrics does not say why:\n%s", body)
	}

	// It comes back, and the pool shrinks by core {7,15}.
	if err := os.WriteFile(devNode, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(roots.Sysfs, NECPUsPath), []byte("2-6,10-14\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	devs := k.waitDevices(t, nitropod.ResourceEnclaveCPU, "10 healthy cpus", func(d []*pluginapi.Device) bool { return healthyCount(d) == 10 })
	for _, d := range devs {
		if (d.ID == "cpu7" || d.ID == "cpu15") != (d.Health == pluginapi.Unhealthy) {
			t.Errorf("after shrinking the pool: %s is %s", d.ID, d.Health)
		}
	}

	// A new config: two slots, 128 MiB blocks.
	if err := os.WriteFile(cfg, []byte("enclaveSlots: 2\nmemoryBlockMiB: 128\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	k.waitDevices(t, nitropod.ResourceEnclave, "2 slots", func(d []*pluginapi.Device) bool { return len(d) == 2 && healthyCount(d) == 2 })
	k.waitDevices(t, nitropod.ResourceEnclaveMemory, "24 blocks of 128 MiB", func(d []*pluginapi.Device) bool { return len(d) == 24 && healthyCount(d) == 24 })
	p.waitMetric(t, `nitropod_deviceplugin_memory_block_mib 128`)

	// A broken config keeps the previous one; a fixed one applies.
	// (Written by rename, as ConfigMap updates are: a rescan between a
	// truncate and a write would read an empty, valid file.)
	writeRename(t, cfg, "enclaveSlots: [\n")
	// Wait until the plugin has read and refused the broken file, so the
	// check below sees the state after the reload, not before it.
	p.waitCounter(t, "nitropod_deviceplugin_config_reload_failures_total", 1)
	if _, body := p.get(t, "/metrics"); !strings.Contains(body, `nitropod_deviceplugin_capacity{resource="nitropod.io/enclave"} 2`+"\n") {
		t.Errorf("after a broken config the plugin no longer advertises the previous 2 slots:\n%s", body)
	}
	k.waitDevices(t, nitropod.ResourceEnclave, "still 2 slots", func(d []*pluginapi.Device) bool { return len(d) == 2 })
	if err := os.WriteFile(cfg, []byte("enclaveSlots: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	k.waitDevices(t, nitropod.ResourceEnclave, "3 slots", func(d []*pluginapi.Device) bool { return len(d) == 3 })
}

// writeRename replaces path with content through a rename in its directory.
func writeRename(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestPoolSetupFromConfig lets the running plugin set an empty pool up from
// its config file, like nitro-enclaves-allocator would.
func TestPoolSetupFromConfig(t *testing.T) {
	dir := t.TempDir()
	roots := fakeRoots(t, fakesysfs.Node{CPUs: 16, NUMANodes: 2})
	cfg := filepath.Join(dir, "device-plugin.yaml")
	if err := os.WriteFile(cfg, []byte("pool:\n  source: config\n  cpuCount: 4\n  memoryMiB: {\"0\": 512}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	k := startKubeletStub(t, dir)
	startPlugin(t, roots, dir, cfg)
	regs := k.waitRegistrations(t, 5*time.Second)
	if diff := cmp.Diff([]string{"cpu1", "cpu2", "cpu9", "cpu10"}, deviceIDs(regs[nitropod.ResourceEnclaveCPU].devices)); diff != "" {
		t.Errorf("cpu devices (-want +got):\n%s", diff)
	}
	if n := len(regs[nitropod.ResourceEnclaveMemory].devices); n != 8 {
		t.Errorf("%d memory devices, want 512/64 = 8", n)
	}
	b, err := os.ReadFile(filepath.Join(roots.Sysfs, NECPUsPath))
	if err != nil || string(b) != "1-2,9-10\n" {
		t.Errorf("ne_cpus = %q, %v; want 1-2,9-10", b, err)
	}
}

// TestAllocatorConfigFollowed sets the pool up from allocator.yaml and
// follows changes to that file.
func TestAllocatorConfigFollowed(t *testing.T) {
	dir := t.TempDir()
	roots := fakeRoots(t, fakesysfs.Node{CPUs: 8})
	alloc := filepath.Join(dir, "allocator.yaml")
	if err := os.WriteFile(alloc, []byte("memory_mib: 512\ncpu_count: 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "device-plugin.yaml")
	if err := os.WriteFile(cfg, []byte("pool: {source: allocator, allocatorConfig: "+alloc+"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	k := startKubeletStub(t, dir)
	startPlugin(t, roots, dir, cfg)
	regs := k.waitRegistrations(t, 5*time.Second)
	if diff := cmp.Diff([]string{"cpu1", "cpu5"}, deviceIDs(regs[nitropod.ResourceEnclaveCPU].devices)); diff != "" {
		t.Errorf("cpu devices (-want +got):\n%s", diff)
	}
	if n := len(regs[nitropod.ResourceEnclaveMemory].devices); n != 8 {
		t.Errorf("%d memory devices, want 8", n)
	}
	if err := os.WriteFile(alloc, []byte("memory_mib: 1024\ncpu_pool: 2-3,6-7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	k.waitDevices(t, nitropod.ResourceEnclaveCPU, "cpus 2,3,6,7 healthy", func(d []*pluginapi.Device) bool {
		healthy := map[string]bool{}
		for _, x := range d {
			healthy[x.ID] = x.Health == pluginapi.Healthy
		}
		return healthy["cpu2"] && healthy["cpu3"] && healthy["cpu6"] && healthy["cpu7"] && !healthy["cpu1"] && !healthy["cpu5"]
	})
	k.waitDevices(t, nitropod.ResourceEnclaveMemory, "16 healthy blocks", func(d []*pluginapi.Device) bool { return healthyCount(d) == 16 })
}

// TestNoNitroNode registers zero capacity and says why.
func TestNoNitroNode(t *testing.T) {
	dir := t.TempDir()
	k := startKubeletStub(t, dir)
	p := startPlugin(t, fakeRoots(t, fakesysfs.Node{CPUs: 8, NoModule: true, NoDevice: true}), dir, "")
	for r, reg := range k.waitRegistrations(t, 5*time.Second) {
		if len(reg.devices) != 0 {
			t.Errorf("%s advertises %d devices on a node without Nitro", r, len(reg.devices))
		}
	}
	p.waitMetric(t, `nitropod_deviceplugin_nitro_supported 0`)
	p.waitMetric(t, `nitropod_deviceplugin_capacity{resource="nitropod.io/enclave"} 0`)
	_, body := p.get(t, "/metrics")
	if !strings.Contains(body, `nitropod_deviceplugin_unsupported{reason="the nitro_enclaves kernel module is not loaded`) {
		t.Errorf("/metrics does not say why:\n%s", body)
	}
}

// TestRunMetricsAddrInUse fails cleanly (no hang, sockets removed) when the
// metrics address is taken.
func TestRunMetricsAddrInUse(t *testing.T) {
	dir := t.TempDir()
	first := startPlugin(t, fakeRoots(t, twoNodeHost), filepath.Join(dir, "a"), "")
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Options{Roots: fakeRoots(t, twoNodeHost), PluginDir: filepath.Join(dir, "b"), MetricsAddr: first.metrics})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "listening for metrics on "+first.metrics) {
			t.Errorf("Run = %v, want a metrics listen error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run hung after failing to listen for metrics")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "b", "*.sock")); len(left) != 0 {
		t.Errorf("sockets left behind: %v", left)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "device-plugin.yaml")
	if err := os.WriteFile(cfg, []byte("enclaveSlot: 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), Options{Roots: fakeRoots(t, twoNodeHost), PluginDir: dir, ConfigPath: cfg})
	if err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("Run with a misspelt key = %v, want an error", err)
	}
}
