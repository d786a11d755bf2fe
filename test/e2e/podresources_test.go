//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/test/cluster"
)

// devices is a container's devices per resource name, IDs sorted.
type devices map[string][]string

// podResources asks kubelet's pod-resources API (kubelet's own record of
// what it allocated from the device plugins) for every Pod's devices:
// "namespace/name" -> container -> devices.
func (e *env) podResources() (map[string]map[string]devices, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sock := cluster.PodResourcesSocket(e.dir)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("kubelet pod-resources socket %s: %w", sock, err)
	}
	defer conn.Close()
	resp, err := podresourcesv1.NewPodResourcesListerClient(conn).List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("kubelet pod-resources List at %s: %w", sock, err)
	}
	out := map[string]map[string]devices{}
	for _, p := range resp.GetPodResources() {
		cs := map[string]devices{}
		for _, c := range p.GetContainers() {
			d := devices{}
			for _, dev := range c.GetDevices() {
				d[dev.GetResourceName()] = append(d[dev.GetResourceName()], dev.GetDeviceIds()...)
			}
			for _, ids := range d {
				sort.Strings(ids)
			}
			cs[c.GetName()] = d
		}
		out[p.GetNamespace()+"/"+p.GetName()] = cs
	}
	return out, nil
}

// containerDevices waits (kubelet may just have restarted) until kubelet's
// pod-resources API lists the container and returns its devices.
func (e *env) containerDevices(ns, pod, container string, timeout time.Duration) devices {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		all, err := e.podResources()
		if err == nil {
			if d, ok := all[ns+"/"+pod][container]; ok {
				return d
			}
			err = fmt.Errorf("no container %s/%s/%s among %d Pods", ns, pod, container, len(all))
		}
		last = err
		if time.Now().After(deadline) {
			e.t.Fatalf("kubelet's pod-resources API: %v", last)
		}
		time.Sleep(time.Second)
	}
}

// heldDevices is every device of resource that kubelet's
// pod-resources API reports allocated to some container, sorted.
func (e *env) heldDevices(resource string) []string {
	e.t.Helper()
	all, err := e.podResources()
	if err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	for pod, cs := range all {
		for c, d := range cs {
			for _, id := range d[resource] {
				ids = append(ids, pod+"/"+c+":"+id)
			}
		}
	}
	sort.Strings(ids)
	return ids
}

// waitNoneHeld waits until kubelet's pod-resources API reports no device
// of resource held by any container (kubelet forgets a deleted Pod a moment
// after the API server does) and fails the test otherwise.
func (e *env) waitNoneHeld(resource string, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		held := e.heldDevices(resource)
		if len(held) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Errorf("kubelet reports %s devices still held %s after the Pods were deleted: %v", resource, timeout, held)
			return
		}
		time.Sleep(time.Second)
	}
}

// memoryDeviceID is the device plugin's enclave-memory device ID:
// node<N>-mem<I>-<B>MiB, one block of B MiB.
var memoryDeviceID = regexp.MustCompile(`^node[0-9]+-mem[0-9]+-([0-9]+)MiB$`)

// enclaveSize is what an allocation buys: one vCPU per distinct
// enclave-cpu device, the sum of the enclave-memory blocks.
func enclaveSize(d devices) (cpus, memMiB int, err error) {
	seen := map[string]bool{}
	for _, id := range d[nitropod.ResourceEnclaveCPU] {
		seen[id] = true
	}
	for _, id := range d[nitropod.ResourceEnclaveMemory] {
		m := memoryDeviceID.FindStringSubmatch(id)
		if m == nil {
			return 0, 0, fmt.Errorf("enclave-memory device ID %q is not node<N>-mem<I>-<B>MiB", id)
		}
		b, _ := strconv.Atoi(m[1])
		memMiB += b
	}
	return len(seen), memMiB, nil
}

// qemuSize reads -smp and -m from the command line of the QEMU process
// that emulates the container's enclave.
func qemuSize(containerID string) (cpus, memMiB int, cmdline string, err error) {
	pids, _ := enclaveProcesses(containerID)
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "qemu-system") {
			continue
		}
		cmdline = strings.Join(args, " ")
		cpus, memMiB = -1, -1
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-smp":
				cpus, err = strconv.Atoi(strings.SplitN(args[i+1], ",", 2)[0])
			case "-m":
				memMiB, err = strconv.Atoi(strings.TrimSuffix(strings.SplitN(args[i+1], ",", 2)[0], "M"))
			}
			if err != nil {
				return 0, 0, cmdline, fmt.Errorf("QEMU %d: %w", pid, err)
			}
		}
		if cpus < 0 || memMiB < 0 {
			return 0, 0, cmdline, fmt.Errorf("QEMU %d has no -smp or -m", pid)
		}
		return cpus, memMiB, cmdline, nil
	}
	return 0, 0, "", fmt.Errorf("no QEMU process below the launcher of %s (processes %v)", containerID, pids)
}

// devicePluginAllocations reads the device plugin's
// nitropod_deviceplugin_allocations_total per resource from its /metrics
// (the DaemonSet Pod's IP, port 9465 of the chart): how many containers
// kubelet asked it to allocate for.
func (e *env) devicePluginAllocations() (map[string]float64, error) {
	ip, err := e.kubectl("", "-n", cluster.Namespace, "get", "pods", "-l", "app.kubernetes.io/name=nitropod-device-plugin",
		"-o", "jsonpath={.items[*].status.podIP}")
	if err != nil {
		return nil, err
	}
	if f := strings.Fields(ip); len(f) != 1 {
		return nil, fmt.Errorf("device plugin Pod IPs %q; want one", ip)
	}
	body, err := httpGet("http://"+strings.TrimSpace(ip)+":9465/metrics", 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("device plugin metrics: %w", err)
	}
	out := map[string]float64{}
	re := regexp.MustCompile(`^nitropod_deviceplugin_allocations_total\{resource="([^"]+)"\} ([0-9.e+]+)$`)
	for _, l := range strings.Split(body, "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				return nil, fmt.Errorf("device plugin metrics line %q: %w", l, err)
			}
			out[m[1]] = v
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("device plugin metrics have no nitropod_deviceplugin_allocations_total:\n%s", body)
	}
	return out, nil
}

// registrations counts the device plugin's "registered with kubelet" log
// lines per resource (it logs one once kubelet accepted a registration).
func registrations(log string) map[string]int {
	n := map[string]int{}
	match := map[string]*regexp.Regexp{}
	for _, r := range []string{nitropod.ResourceEnclaveCPU, nitropod.ResourceEnclaveMemory, nitropod.ResourceEnclave} {
		// text (resource=R) or JSON ("resource":"R") lines
		match[r] = regexp.MustCompile(`resource(=|":")` + regexp.QuoteMeta(r) + `("|\s|$)`)
	}
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "registered with kubelet") {
			continue
		}
		for r, re := range match {
			if re.MatchString(l) {
				n[r]++
			}
		}
	}
	return n
}

// imageReady waits for the shim's "enclave image ready" line of the
// container (its log fields name the container ID) in containerd's log.
func (e *env) imageReady(containerID string) string {
	e.t.Helper()
	id := strings.TrimPrefix(containerID, "containerd://")
	if id == "" {
		e.t.Fatal("no container ID")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, l := range grepLines(readFile(e.t, filepath.Join(e.dir, "logs", "containerd.log")), "enclave image ready") {
			if strings.Contains(l, "id="+id) {
				return l
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("containerd's log has no \"enclave image ready\" line of container %s", id)
		}
		time.Sleep(time.Second)
	}
}
