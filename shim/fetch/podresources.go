package fetch

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// maxPodResourcesMessage bounds kubelet's answer (every Pod on the node
// with its devices): far above a node's worth, far below harm.
const maxPodResourcesMessage = 16 << 20

// PodDevices asks kubelet's pod-resources API at socket which devices it
// allocated to container of Pod namespace/name, keyed by resource name.
// This is kubelet's own record of what the device plugin handed out, so
// nothing the Pod's author wrote can change it. A Pod that kubelet does not
// know is an error; a container without devices yields an empty map.
func PodDevices(ctx context.Context, socket, namespace, name, container string) (map[string][]string, error) {
	all, err := AllPodDevices(ctx, socket)
	if err != nil {
		return nil, err
	}
	pod, ok := all[namespace+"/"+name]
	if !ok {
		return nil, fmt.Errorf("kubelet's pod-resources API at %s has no Pod %s/%s", socket, namespace, name)
	}
	if devs := pod[container]; devs != nil {
		return devs, nil
	}
	return map[string][]string{}, nil
}

// AllPodDevices lists every Pod kubelet runs, as "namespace/name", with the
// devices of each of its containers by container name and resource name.
func AllPodDevices(ctx context.Context, socket string) (map[string]map[string]map[string][]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxPodResourcesMessage)))
	if err != nil {
		return nil, fmt.Errorf("kubelet pod-resources socket %s: %w", socket, err)
	}
	defer conn.Close()
	resp, err := podresourcesv1.NewPodResourcesListerClient(conn).List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("asking kubelet's pod-resources API at %s: %w", socket, err)
	}
	out := map[string]map[string]map[string][]string{}
	for _, p := range resp.GetPodResources() {
		ctrs := map[string]map[string][]string{}
		for _, c := range p.GetContainers() {
			for _, d := range c.GetDevices() {
				if ctrs[c.GetName()] == nil {
					ctrs[c.GetName()] = map[string][]string{}
				}
				ctrs[c.GetName()][d.GetResourceName()] = append(ctrs[c.GetName()][d.GetResourceName()], d.GetDeviceIds()...)
			}
		}
		out[p.GetNamespace()+"/"+p.GetName()] = ctrs
	}
	return out, nil
}
