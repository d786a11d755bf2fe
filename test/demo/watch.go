package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/test/cluster"
)

// watcher waits until every workload of the applied file is Ready and shows
// each enclave Pod's progress on the way: from the Pod's status, and from
// the shim's lines in containerd's log ("building enclave image",
// "enclave image ready"), matched to Pods by container ID through CRI.
type watcher struct {
	c             *cluster.Cluster
	objs          []object
	applied       time.Time
	containerdLog string
	bin           func(string) (string, error)

	logOffset int64
	// stage is the shim's last word per container ID.
	stage map[string]string
	// shown is the last state printed per Pod.
	shown map[string]string
}

const pollInterval = 2 * time.Second

func (w *watcher) wait(ctx context.Context) error {
	w.stage, w.shown = map[string]string{}, map[string]string{}
	for {
		w.readShimLog()
		pods, err := w.enclavePods(ctx)
		if err != nil && ctx.Err() == nil {
			return err
		}
		containers := w.containers(ctx)
		allReady := true
		for _, p := range pods {
			key := p.Namespace + "/" + p.Name
			st, ready := w.state(p, containers[key])
			if !ready {
				allReady = false
			}
			if w.shown[key] != st {
				w.shown[key] = st
				logf("[%4.0fs] pod %s: %s", time.Since(w.applied).Seconds(), key, st)
			}
		}
		pending, err := w.pendingWorkloads(ctx)
		if err != nil && ctx.Err() == nil {
			return err
		}
		if err == nil && allReady && len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			msg := "timed out"
			if len(pending) > 0 {
				msg += " waiting for " + strings.Join(pending, ", ")
			}
			out, _ := w.c.Kubectl(context.Background(), "", "get", "pods", "-A", "-o", "wide")
			return fmt.Errorf("%s: %w\n%s", msg, ctx.Err(), out)
		case <-time.After(pollInterval):
		}
	}
}

// enclavePods are the nitropod-managed Pods (not being deleted) in the
// file's namespaces.
func (w *watcher) enclavePods(ctx context.Context) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	for _, ns := range namespaces(w.objs) {
		out, err := w.c.Kubectl(ctx, "", "-n", ns, "get", "pods", "-l", nitropod.ManagedLabel+"=yes", "-o", "json")
		if err != nil {
			return nil, err
		}
		var list corev1.PodList
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return nil, fmt.Errorf("reading the Pods of namespace %s: %w", ns, err)
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
	}
	return pods, nil
}

// state describes a Pod's progress in a few words; ready is true for a
// Ready (or completed) Pod.
func (w *watcher) state(p corev1.Pod, containerID string) (string, bool) {
	switch p.Status.Phase {
	case corev1.PodSucceeded:
		return "Succeeded (its app exited 0)", true
	case corev1.PodFailed:
		return "Failed: " + p.Status.Reason + " " + p.Status.Message, false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return "Ready (the app has started in its enclave)", true
		}
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return "Pending, not scheduled: " + c.Message, false
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if wt := cs.State.Waiting; wt != nil && wt.Reason != "" && wt.Reason != "ContainerCreating" && wt.Reason != "PodInitializing" {
			return "waiting: " + wt.Reason + ": " + firstLine(wt.Message), false
		}
		if cs.State.Running != nil {
			return "running, not Ready yet (readiness probe)", false
		}
	}
	if s := w.stage[containerID]; s != "" {
		return s, false
	}
	if p.Spec.NodeName == "" {
		return "Pending", false
	}
	return "creating its sandbox, pulling the image", false
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

var logField = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)

// readShimLog reads containerd's log from where it stopped last time and
// records the shim's EIF lines per container ID.
func (w *watcher) readShimLog() {
	f, err := os.Open(w.containerdLog)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(w.logOffset, io.SeekStart); err != nil {
		return
	}
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return // a partial last line is read again next time
		}
		w.logOffset += int64(len(line))
		if !strings.Contains(line, "enclave image") {
			continue
		}
		fields := map[string]string{}
		for _, m := range logField.FindAllStringSubmatch(line, -1) {
			v := m[2]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			fields[m[1]] = v
		}
		id := fields["id"]
		switch fields["msg"] {
		case "building enclave image":
			w.stage[id] = "building its EIF (enclave image) from the container image"
		case "enclave image ready":
			how := "EIF built"
			if fields["cache_hit"] == "true" {
				how = "EIF found in the node's cache"
			}
			if d, err := time.ParseDuration(fields["duration"]); err == nil {
				how += fmt.Sprintf(" in %.1fs", d.Seconds())
			}
			w.stage[id] = how + "; booting the enclave (QEMU, TCG) and starting the app"
		}
	}
}

// containers maps each Pod (namespace/name) to its newest container's ID,
// from CRI (a container is listed while the shim still creates it).
func (w *watcher) containers(ctx context.Context) map[string]string {
	m := map[string]string{}
	crictl, err := w.bin("crictl")
	if err != nil {
		return m
	}
	out, err := exec.CommandContext(ctx, crictl, "-r", "unix://"+w.c.ContainerdSock, "ps", "-a", "-o", "json").Output()
	if err != nil {
		return m
	}
	var list struct {
		Containers []struct {
			ID        string            `json:"id"`
			CreatedAt string            `json:"createdAt"`
			Labels    map[string]string `json:"labels"`
		} `json:"containers"`
	}
	if json.Unmarshal(out, &list) != nil {
		return m
	}
	newest := map[string]int64{}
	for _, c := range list.Containers {
		key := c.Labels["io.kubernetes.pod.namespace"] + "/" + c.Labels["io.kubernetes.pod.name"]
		at, _ := strconv.ParseInt(c.CreatedAt, 10, 64)
		if _, ok := m[key]; !ok || at > newest[key] {
			m[key], newest[key] = c.ID, at
		}
	}
	return m
}

// pendingWorkloads names the file's workloads that are not Ready yet:
// Pods, Deployments, ReplicaSets, StatefulSets, DaemonSets (all replicas of
// the current generation Ready) and Jobs (complete). A failed Job is an
// error.
func (w *watcher) pendingWorkloads(ctx context.Context) ([]string, error) {
	var pending []string
	for _, o := range w.objs {
		var check string
		switch o.Kind {
		case "Pod":
			check = `{.status.phase} {.status.conditions[?(@.type=="Ready")].status}`
		case "Deployment":
			check = `{.metadata.generation} {.status.observedGeneration} {.spec.replicas} {.status.updatedReplicas} {.status.readyReplicas}`
		case "ReplicaSet", "StatefulSet":
			check = `{.metadata.generation} {.status.observedGeneration} {.spec.replicas} {.spec.replicas} {.status.readyReplicas}`
		case "DaemonSet":
			check = `{.metadata.generation} {.status.observedGeneration} {.status.desiredNumberScheduled} {.status.updatedNumberScheduled} {.status.numberReady}`
		case "Job":
			check = `{.status.conditions[?(@.type=="Complete")].status} {.status.conditions[?(@.type=="Failed")].status}`
		default:
			continue
		}
		out, err := w.c.Kubectl(ctx, "", "-n", o.Namespace, "get", strings.ToLower(o.Kind), o.Name, "-o", "jsonpath="+check)
		if err != nil {
			return nil, err
		}
		f := strings.Fields(out)
		ready := false
		switch o.Kind {
		case "Pod":
			ready = len(f) > 0 && (f[0] == "Succeeded" || (len(f) == 2 && f[1] == "True"))
		case "Job":
			if strings.Contains(out, "True") && !strings.HasPrefix(out, "True") {
				return nil, fmt.Errorf("the Job %s/%s failed: see kubectl -n %s describe job %s", o.Namespace, o.Name, o.Namespace, o.Name)
			}
			ready = strings.HasPrefix(out, "True")
		default:
			// generation, observed generation, wanted, updated, ready
			ready = len(f) == 5 && f[0] == f[1] && f[2] == f[3] && f[3] == f[4]
		}
		if !ready {
			pending = append(pending, o.Kind+" "+o.Namespace+"/"+o.Name)
		}
	}
	return pending, nil
}

// forwarder forwards local connections to a Pod, or to a Ready Pod of a
// Service chosen per connection from the Service's EndpointSlices (there
// is no service proxy in this cluster, so ClusterIPs do not route).
type forwarder struct {
	c      *cluster.Cluster
	target target
}

func (f *forwarder) serve(ctx context.Context, l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			addr, err := f.resolve(rctx)
			cancel()
			if err != nil {
				fmt.Fprintln(os.Stderr, "demo: forward:", err)
				conn.Close()
				return
			}
			forward(conn, addr)
		}()
	}
}

// resolve returns the IP:port a new connection goes to.
func (f *forwarder) resolve(ctx context.Context) (string, error) {
	t := f.target
	if t.kind == "pod" {
		out, err := f.c.Kubectl(ctx, "", "-n", t.namespace, "get", "pod", t.name, "-o", "json")
		if err != nil {
			return "", err
		}
		var p corev1.Pod
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			return "", err
		}
		if p.Status.PodIP == "" {
			return "", fmt.Errorf("pod %s has no IP", t)
		}
		n, err := strconv.Atoi(t.port)
		if err != nil {
			for _, c := range p.Spec.Containers {
				for _, cp := range c.Ports {
					if cp.Name == t.port {
						n, err = int(cp.ContainerPort), nil
					}
				}
			}
			if err != nil {
				return "", fmt.Errorf("pod %s declares no port named %q", t, t.port)
			}
		}
		return net.JoinHostPort(p.Status.PodIP, strconv.Itoa(n)), nil
	}
	out, err := f.c.Kubectl(ctx, "", "-n", t.namespace, "get", "service", t.name, "-o", "json")
	if err != nil {
		return "", err
	}
	var svc corev1.Service
	if err := json.Unmarshal([]byte(out), &svc); err != nil {
		return "", err
	}
	portName, found := "", false
	for _, sp := range svc.Spec.Ports {
		if strconv.Itoa(int(sp.Port)) == t.port || (sp.Name != "" && sp.Name == t.port) {
			portName, found = sp.Name, true
			break
		}
	}
	if !found {
		return "", fmt.Errorf("service %s has no port %s", t, t.port)
	}
	out, err = f.c.Kubectl(ctx, "", "-n", t.namespace, "get", "endpointslices", "-l", discoveryv1.LabelServiceName+"="+t.name, "-o", "json")
	if err != nil {
		return "", err
	}
	var slices discoveryv1.EndpointSliceList
	if err := json.Unmarshal([]byte(out), &slices); err != nil {
		return "", err
	}
	var addrs []string
	for _, s := range slices.Items {
		num := int32(0)
		for _, sp := range s.Ports {
			if sp.Name != nil && *sp.Name == portName && sp.Port != nil {
				num = *sp.Port
			}
		}
		if num == 0 {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				addrs = append(addrs, net.JoinHostPort(a, strconv.Itoa(int(num))))
			}
		}
	}
	if len(addrs) == 0 {
		return "", fmt.Errorf("service %s has no Ready endpoint", t)
	}
	return addrs[rand.IntN(len(addrs))], nil
}
