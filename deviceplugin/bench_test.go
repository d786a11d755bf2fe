package deviceplugin

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/deviceplugin/fakesysfs"
)

// largeNode is the benchmark host: 192 CPUs on 2 NUMA nodes with all of
// its 768 GiB reserved as 2 MiB hugepages, the pool everything but CPU 0's
// core. At the default 64 MiB block this is 12288 memory devices.
var largeNode = fakesysfs.Node{CPUs: 192, NUMANodes: 2, Pool: "1-95,97-191",
	Hugepages: pages(PageSize2MiB, 384*512, 384*512)}

// kubeletMaxMessage is kubelet's gRPC receive limit for ListAndWatch.
const kubeletMaxMessage = 4 << 20

// listAndWatchSizes is the encoded size of each resource's ListAndWatch
// message for the large node at the default block size.
func listAndWatchSizes(t testing.TB) map[string]int {
	inv, err := Discover(fakeRoots(t, largeNode))
	if err != nil {
		t.Fatal(err)
	}
	adv := Advertise(inv, Settings{}, Advertisement{})
	if adv.Problem != "" {
		t.Fatal(adv.Problem)
	}
	out := map[string]int{}
	for _, r := range Resources {
		out[r] = proto.Size(&pluginapi.ListAndWatchResponse{Devices: toAPI(adv.Devices(r))})
	}
	if n := len(adv.Memory); n != 12288 {
		t.Fatalf("%d memory devices, want 768 GiB / 64 MiB = 12288", n)
	}
	if n := len(adv.CPU); n != 190 {
		t.Fatalf("%d cpu devices, want 190", n)
	}
	return out
}

// TestListAndWatchSizeLargeNode keeps the largest message under the 1 MiB
// target (a quarter of kubelet's limit).
func TestListAndWatchSizeLargeNode(t *testing.T) {
	for r, n := range listAndWatchSizes(t) {
		t.Logf("%s: %d bytes", r, n)
		if n >= 1<<20 || n >= kubeletMaxMessage {
			t.Errorf("%s ListAndWatch message is %d bytes, want < 1 MiB", r, n)
		}
	}
}

// BenchmarkListAndWatchSize reports the message sizes as metrics.
func BenchmarkListAndWatchSize(b *testing.B) {
	sizes := listAndWatchSizes(b)
	for b.Loop() {
		// The size is a property of the message, not of time; the loop
		// only satisfies the benchmark harness.
	}
	b.ReportMetric(float64(sizes[nitropod.ResourceEnclaveMemory]), "memory-bytes")
	b.ReportMetric(float64(sizes[nitropod.ResourceEnclaveCPU]), "cpu-bytes")
	b.ReportMetric(float64(sizes[nitropod.ResourceEnclave]), "slot-bytes")
}

// BenchmarkAllocate measures kubelet's view of Allocate: a gRPC call over
// the plugin's unix socket for 8 CPUs and 64 memory blocks on the large
// node, and reports the 50th and 99th percentile per call.
func BenchmarkAllocate(b *testing.B) {
	inv, err := Discover(fakeRoots(b, largeNode))
	if err != nil {
		b.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	st := newState(log, newMetrics())
	st.set(inv, Advertise(inv, Settings{}, Advertisement{}))
	dir := b.TempDir()
	clients := map[string]pluginapi.DevicePluginClient{}
	for _, r := range Resources {
		ln, err := net.Listen("unix", filepath.Join(dir, SocketName(r)))
		if err != nil {
			b.Fatal(err)
		}
		srv := grpc.NewServer()
		pluginapi.RegisterDevicePluginServer(srv, &service{resource: r, st: st})
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(srv.Stop)
		conn, err := grpc.NewClient("unix://"+filepath.Join(dir, SocketName(r)), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		clients[r] = pluginapi.NewDevicePluginClient(conn)
	}
	var memIDs []string
	for i := range 64 {
		memIDs = append(memIDs, contract.MemoryDeviceID(1, i, nitropod.DefaultMemoryBlockMiB))
	}
	reqs := map[string]*pluginapi.AllocateRequest{
		nitropod.ResourceEnclaveCPU: {ContainerRequests: []*pluginapi.ContainerAllocateRequest{
			{DevicesIds: []string{"cpu50", "cpu51", "cpu52", "cpu53", "cpu146", "cpu147", "cpu148", "cpu149"}}}},
		nitropod.ResourceEnclaveMemory: {ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: memIDs}}},
		nitropod.ResourceEnclave:       {ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"slot1"}}}},
	}
	ctx := context.Background()
	for _, r := range Resources {
		// The handler alone, without gRPC and the socket.
		b.Run("handler/"+r[len(nitropod.AnnotationPrefix):], func(b *testing.B) {
			svc, req := &service{resource: r, st: st}, reqs[r]
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := svc.Allocate(ctx, req); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportPercentiles(b, lat)
		})
		b.Run("grpc/"+r[len(nitropod.AnnotationPrefix):], func(b *testing.B) {
			c, req := clients[r], reqs[r]
			if _, err := c.Allocate(ctx, req); err != nil { // warm the connection
				b.Fatal(err)
			}
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := c.Allocate(ctx, req); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportPercentiles(b, lat)
		})
	}
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*50/100].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}
