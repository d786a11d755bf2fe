package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// kubeletStub is the kubelet side of the device plugin protocol: a real
// gRPC Registration server on kubelet.sock in a test directory that, like
// kubelet, dials each registering plugin back on its endpoint, asks for its
// options and follows its ListAndWatch stream.
type kubeletStub struct {
	pluginapi.UnimplementedRegistrationServer
	t   testing.TB
	dir string
	srv *grpc.Server

	ctx    context.Context
	cancel context.CancelFunc
	regs   chan registration

	mu      sync.Mutex
	conns   []*grpc.ClientConn
	clients map[string]pluginapi.DevicePluginClient
	latest  map[string][]*pluginapi.Device
	// connected holds the endpoints whose ListAndWatch stream is open;
	// like kubelet 1.37 (devicemanager PluginConnected), the stub refuses
	// a second registration of a connected endpoint.
	connected map[string]bool
	wg        sync.WaitGroup
}

// registration is one completed Register call.
type registration struct {
	resource string
	options  *pluginapi.DevicePluginOptions
	devices  []*pluginapi.Device
	at       time.Time
}

// startKubeletStub listens on dir/kubelet.sock. Stop it with stop (also
// registered as a cleanup).
func startKubeletStub(t testing.TB, dir string) *kubeletStub {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	k := &kubeletStub{t: t, dir: dir, ctx: ctx, cancel: cancel, regs: make(chan registration, 16),
		clients: map[string]pluginapi.DevicePluginClient{}, latest: map[string][]*pluginapi.Device{},
		connected: map[string]bool{}}
	ln, err := net.Listen("unix", filepath.Join(dir, KubeletSocketName))
	if err != nil {
		t.Fatalf("kubelet stub: %v", err)
	}
	k.srv = grpc.NewServer()
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go func() { _ = k.srv.Serve(ln) }()
	t.Cleanup(k.stop)
	return k
}

// Register is what kubelet does on registration: check the request, dial
// the plugin, read its options and first device list.
func (k *kubeletStub) Register(ctx context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	if r.Version != pluginapi.Version {
		return nil, fmt.Errorf("kubelet stub: version %q, want %q", r.Version, pluginapi.Version)
	}
	if filepath.Base(r.Endpoint) != r.Endpoint {
		return nil, fmt.Errorf("kubelet stub: endpoint %q is not a file name in the plugin dir", r.Endpoint)
	}
	endpoint := filepath.Join(k.dir, r.Endpoint)
	k.mu.Lock()
	dup := k.connected[endpoint]
	k.mu.Unlock()
	if dup {
		return nil, fmt.Errorf("device plugin already connected: %s", endpoint)
	}
	conn, err := grpc.NewClient("unix://"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	client := pluginapi.NewDevicePluginClient(conn)
	opts, err := client.GetDevicePluginOptions(ctx, &pluginapi.Empty{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("kubelet stub: GetDevicePluginOptions: %w", err)
	}
	stream, err := client.ListAndWatch(k.ctx, &pluginapi.Empty{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("kubelet stub: ListAndWatch: %w", err)
	}
	first, err := stream.Recv()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("kubelet stub: first ListAndWatch message: %w", err)
	}
	k.mu.Lock()
	k.conns = append(k.conns, conn)
	k.clients[r.ResourceName] = client
	k.latest[r.ResourceName] = first.Devices
	k.connected[endpoint] = true
	k.mu.Unlock()
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		for {
			msg, err := stream.Recv()
			if err != nil {
				k.mu.Lock()
				delete(k.connected, endpoint)
				k.mu.Unlock()
				return
			}
			k.mu.Lock()
			k.latest[r.ResourceName] = msg.Devices
			k.mu.Unlock()
		}
	}()
	k.regs <- registration{resource: r.ResourceName, options: opts, devices: first.Devices, at: time.Now()}
	return &pluginapi.Empty{}, nil
}

// stop is kubelet going away: its socket disappears and its streams end.
func (k *kubeletStub) stop() {
	k.cancel()
	k.srv.Stop()
	k.mu.Lock()
	for _, c := range k.conns {
		c.Close()
	}
	k.conns = nil
	k.mu.Unlock()
	k.wg.Wait()
	if err := os.Remove(filepath.Join(k.dir, KubeletSocketName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		k.t.Errorf("kubelet stub: %v", err)
	}
}

// waitRegistrations waits for one registration of each resource.
func (k *kubeletStub) waitRegistrations(t testing.TB, timeout time.Duration) map[string]registration {
	t.Helper()
	got := map[string]registration{}
	deadline := time.After(timeout)
	for len(got) < len(Resources) {
		select {
		case r := <-k.regs:
			got[r.resource] = r
		case <-deadline:
			t.Fatalf("kubelet stub: %d of %d resources registered within %v", len(got), len(Resources), timeout)
		}
	}
	return got
}

func (k *kubeletStub) client(resource string) pluginapi.DevicePluginClient {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.clients[resource]
}

// waitDevices waits until the latest list of resource satisfies ok.
func (k *kubeletStub) waitDevices(t testing.TB, resource string, what string, ok func([]*pluginapi.Device) bool) []*pluginapi.Device {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		k.mu.Lock()
		devs := k.latest[resource]
		k.mu.Unlock()
		if ok(devs) {
			return devs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no ListAndWatch update with %s within 5s; last list has %d devices", resource, what, len(devs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func healthyCount(devs []*pluginapi.Device) int {
	n := 0
	for _, d := range devs {
		if d.Health == pluginapi.Healthy {
			n++
		}
	}
	return n
}
