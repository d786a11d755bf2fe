package fetch

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

func TestExposedTCPPorts(t *testing.T) {
	got := ExposedTCPPorts(map[string]struct{}{"80/tcp": {}, "8080": {}, "53/udp": {}, "x/tcp": {}, "0/tcp": {}, "70000/tcp": {}})
	if diff := cmp.Diff([]uint16{80, 8080}, got); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
}

func TestMainUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"image-ports", "a"}, {"s3", "s3://b/k"}} {
		var out, errb bytes.Buffer
		if code := Main(args, &out, &errb); code != 1 || !strings.Contains(errb.String(), "nitropod-fetch") {
			t.Errorf("Main(%q) = %d, stderr %q; want 1 and a usage message", args, code, errb.String())
		}
	}
}

// fakeKubelet serves kubelet's pod-resources List from a fixed answer. It
// is a FAKE of kubelet for this unit test only; the e2e tier asks the real
// kubelet.
type fakeKubelet struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	resp *podresourcesv1.ListPodResourcesResponse
}

func (f *fakeKubelet) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	return f.resp, nil
}

func TestPodDevices(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "kubelet.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(srv, &fakeKubelet{resp: &podresourcesv1.ListPodResourcesResponse{
		PodResources: []*podresourcesv1.PodResources{
			{Name: "web", Namespace: "other", Containers: []*podresourcesv1.ContainerResources{
				{Name: "app", Devices: []*podresourcesv1.ContainerDevices{{ResourceName: "nitropod.io/enclave-cpu", DeviceIds: []string{"cpu9"}}}},
			}},
			{Name: "web", Namespace: "default", Containers: []*podresourcesv1.ContainerResources{
				{Name: "sidecar"},
				{Name: "app", Devices: []*podresourcesv1.ContainerDevices{
					{ResourceName: "nitropod.io/enclave-cpu", DeviceIds: []string{"cpu2", "cpu3"}},
					{ResourceName: "nitropod.io/enclave", DeviceIds: []string{"slot0"}},
				}},
			}},
		},
	}})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	var out, errb bytes.Buffer
	if code := Main([]string{"pod-devices", sock, "default", "web", "app"}, &out, &errb); code != 0 {
		t.Fatalf("pod-devices: exit %d: %s", code, errb.String())
	}
	var got map[string][]string
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"nitropod.io/enclave-cpu": {"cpu2", "cpu3"}, "nitropod.io/enclave": {"slot0"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("devices = %v, want %v (the Pod of the same name in another namespace must not count)", got, want)
	}
	if _, err := PodDevices(context.Background(), sock, "default", "nope", "app"); err == nil || !strings.Contains(err.Error(), "has no Pod default/nope") {
		t.Errorf("unknown Pod: error %v", err)
	}
	if _, err := PodDevices(context.Background(), filepath.Join(t.TempDir(), "absent.sock"), "default", "web", "app"); err == nil || !strings.Contains(err.Error(), "absent.sock") {
		t.Errorf("absent socket: error %v, want one naming the socket", err)
	}
}
