//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/shim/fetch"
	"github.com/nitropod/nitropod/test/cluster"
)

// lifecyclePool is a FAKE enclave cpu pool of two cores (four vCPUs), so
// that two enclaves of two vCPUs run at once: a rolling update can surge,
// and the churn runs Pods in pairs.
const lifecyclePool = "1,5,2,6"

// TestEnclaveLifecycle runs the scenarios about when an enclave container
// counts as started, what the cluster refuses at admission, and what many
// create/delete cycles leave behind, on a cluster of its own.
func TestEnclaveLifecycle(t *testing.T) {
	e := startNitroClusterPool(t, lifecyclePool)
	lic := e.issue(t, "Lifecycle Corp", time.Time{}, time.Now().Add(24*time.Hour))
	e.mustKubectl("", "create", "secret", "generic", nitropod.LicenseSecretName, "--from-file="+nitropod.LicenseSecretKey+"="+lic)

	t.Run("admission refuses Pods that would size their own enclave", func(t *testing.T) {
		e.sub(t).admissionRefusals()
	})
	t.Run("a Pod without probes is Ready only once its app runs", func(t *testing.T) {
		e.sub(t).readyMeansRunning()
	})
	t.Run("a command that does not exist is a start error", func(t *testing.T) {
		e.sub(t).startError()
	})
	t.Run("a rolling update to a version that cannot start keeps the old replica serving", func(t *testing.T) {
		e.sub(t).rollingUpdateKeepsServing()
	})
	t.Run("an enclave's attestation document verifies against the PCRs the cluster reports", func(t *testing.T) {
		e.sub(t).attestationAgainstCluster()
	})
	t.Run("kubelet's stats summary shows the enclave's memory and CPU", func(t *testing.T) {
		e.sub(t).enclaveStatsInSummary()
	})
	t.Run("kubelet restarted while it admits an enclave Pod", func(t *testing.T) {
		e.sub(t).kubeletRestartDuringAdmission()
	})
	t.Run("churn leaves nothing behind", func(t *testing.T) {
		n := 10
		if s := os.Getenv("E2E_CHURN_CYCLES"); s != "" {
			var err error
			if n, err = strconv.Atoi(s); err != nil || n < 1 {
				t.Fatalf("E2E_CHURN_CYCLES=%q: want a positive number of Pod create/delete cycles", s)
			}
		}
		e.sub(t).churn(n)
	})
}

// admissionRefusals: the ValidatingAdmissionPolicy and the webhook of the
// chart refuse a Pod that reaches the nitro RuntimeClass without the label,
// and one that sets the device plugin's variables.
func (e *env) admissionRefusals() {
	t := e.t
	unlabelled := `apiVersion: v1
kind: Pod
metadata: {name: unlabelled-nitro}
spec:
  runtimeClassName: nitro
  containers:
  - {name: app, image: busybox:latest, command: [sleep, "3600"]}
`
	out, err := e.kubectl(unlabelled, "apply", "-f", "-")
	if err == nil || !strings.Contains(err.Error()+out, "must carry the label nitro.k8s.anjuna.io/managed") {
		t.Errorf("unlabelled Pod with runtimeClassName nitro: %v %s; want the admission policy's refusal", err, out)
	}
	forged := strings.Replace(busyboxEnclavePod("forged-env", "2", []string{"sleep", "3600"}),
		"    command:", "    env:\n    - {name: NITROPOD_CPU_IDS, value: \"0-7\"}\n    command:", 1)
	out, err = e.kubectl(forged, "apply", "-f", "-")
	if err == nil || !strings.Contains(err.Error()+out, "env NITROPOD_CPU_IDS is reserved for nitropod") {
		t.Errorf("managed Pod with NITROPOD_CPU_IDS: %v %s; want the webhook's refusal", err, out)
	}
}

// readyMeansRunning: the Pod turns Ready only after its app wrote its first
// line (before, Start returned before the enclave had even booted).
func (e *env) readyMeansRunning() {
	t := e.t
	const name, marker = "ready-first-line", "first-line-of-the-app"
	start := time.Now()
	e.mustKubectl(busyboxEnclavePod(name, "2", []string{"sh", "-c", "echo " + marker + "; exec sleep 3600"}), "apply", "-f", "-")
	defer e.deleteEnclavePod(name)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		p, err := e.pod(name)
		if err == nil && ready(p) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s not Ready after 5m", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	readyAfter := time.Since(start)
	// The line reaches the log file through the launcher and containerd;
	// allow for that copy, far less than the boot the old Start skipped.
	logs := ""
	for i := 0; i < 5 && !strings.Contains(logs, marker); i++ {
		logs, _ = e.kubectl("", "logs", name)
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(logs, marker) {
		t.Errorf("Pod %s is Ready but kubectl logs is %q: Ready came before the app ran", name, logs)
	}
	t.Logf("BENCH e2e: kubectl apply -> Ready (app started), busybox: %.1fs", readyAfter.Seconds())
}

// startError: a Pod whose command is not in the image never runs, and the
// reason is the container's state in the API (kubectl describe), as for a
// runc container, not only a line in its logs.
func (e *env) startError() {
	t := e.t
	const name = "no-such-command"
	e.mustKubectl(busyboxEnclavePod(name, "2", []string{"/no/such/command"}), "apply", "-f", "-")
	defer e.deleteEnclavePod(name)
	var msg string
	e.waitPod(name, 5*time.Minute, "refused with StartError", func(p *corev1.Pod) bool {
		for _, s := range p.Status.ContainerStatuses {
			for _, st := range []corev1.ContainerState{s.State, s.LastTerminationState} {
				if st.Terminated != nil && st.Terminated.Reason == "StartError" {
					msg = st.Terminated.Message
					return true
				}
			}
		}
		return false
	})
	if !strings.Contains(msg, "/no/such/command") {
		t.Errorf("StartError message %q does not name the missing command", msg)
	}
	desc := e.mustKubectl("", "describe", "pod", name)
	if !strings.Contains(desc, "StartError") || !strings.Contains(desc, "/no/such/command") {
		t.Errorf("kubectl describe pod %s does not show the start error:\n%s", name, desc)
	}
	if p, err := e.pod(name); err == nil && ready(p) {
		t.Errorf("Pod %s with a missing command is Ready", name)
	}
	t.Logf("start error: %s", msg)
}

// rollingUpdateKeepsServing: a Deployment's new version that cannot start
// never becomes Ready, so the rollout stops and the old replica serves on.
func (e *env) rollingUpdateKeepsServing() {
	t := e.t
	deployment := func(command string) string {
		return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {app: web, nitro.k8s.anjuna.io/managed: "yes"}
    spec:
      containers:
      - name: app
        image: busybox:latest
        command: [%s]
        ports: [{containerPort: 8080}]
        resources:
          limits: {cpu: "2", memory: 256Mi}
      volumes:
      - name: anjuna-license
        secret: {secretName: anjuna-license}
`, command)
	}
	good := `sh, -c, "mkdir -p /www && echo version-one > /www/index.html && exec httpd -f -p 8080 -h /www"`
	e.mustKubectl(deployment(good), "apply", "-f", "-")
	defer e.mustKubectl("", "delete", "deployment", "web", "--wait=true", "--timeout=3m")
	e.mustKubectl("", "rollout", "status", "deployment/web", "--timeout=5m")
	old := e.webPods()
	if len(old) != 1 {
		t.Fatalf("want one web Pod, found %v", old)
	}
	oldPod, err := e.pod(old[0])
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:8080/", oldPod.Status.PodIP)
	if body, err := httpGet(url, 90*time.Second); err != nil || !strings.Contains(body, "version-one") {
		t.Fatalf("GET %s = %q, %v", url, body, err)
	}

	e.mustKubectl(deployment(`/no/such/server`), "apply", "-f", "-")
	// Wait until the new replica has failed to start at least once.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		failed := false
		for _, n := range e.webPods() {
			if n == old[0] {
				continue
			}
			if p, err := e.pod(n); err == nil {
				for _, s := range p.Status.ContainerStatuses {
					for _, st := range []corev1.ContainerState{s.State, s.LastTerminationState} {
						failed = failed || (st.Terminated != nil && st.Terminated.Reason == "StartError")
					}
				}
			}
		}
		if failed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new replica did not fail to start within 5m; pods %v", e.webPods())
		}
		time.Sleep(time.Second)
	}
	// The old replica is still there, Ready, and serving for a while.
	for i := 0; i < 10; i++ {
		p, err := e.pod(old[0])
		if err != nil || !ready(p) {
			t.Fatalf("the old replica %s is gone or not Ready during a rollout whose new version cannot start (%v)", old[0], err)
		}
		if body, err := httpGet(url, 10*time.Second); err != nil || !strings.Contains(body, "version-one") {
			t.Fatalf("the old replica stopped serving: %q, %v", body, err)
		}
		time.Sleep(time.Second)
	}
}

// kubeletRestartDuringAdmission restarts kubelet right after an enclave
// Pod is created, while kubelet admits it and asks the device plugin to
// allocate: the Pod still ends Ready with exactly one allocation, and
// deleting it frees every device.
func (e *env) kubeletRestartDuringAdmission() {
	t := e.t
	const name = "admitted-across-restart"
	e.mustKubectl(busyboxEnclavePod(name, "2", []string{"sh", "-c", "echo up; exec sleep 3600"}), "apply", "-f", "-")
	// Wait until the scheduler bound it: kubelet is admitting it now.
	e.waitPod(name, time.Minute, "scheduled", func(p *corev1.Pod) bool { return p.Spec.NodeName != "" })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := e.c.RestartKubelet(ctx); err != nil {
		t.Fatalf("restarting kubelet: %v", err)
	}
	e.waitPod(name, 5*time.Minute, "Ready after the kubelet restart", ready)
	devs := e.allocatedDevices()
	cpus := 0
	for _, d := range devs {
		if strings.Contains(d, nitropod.ResourceEnclaveCPU) {
			cpus++
		}
	}
	if cpus != 1 {
		t.Errorf("enclave cpu allocations after the restart: %v; want exactly one, the Pod's", devs)
	}
	e.deleteEnclavePod(name)
	deadline := time.Now().Add(time.Minute)
	for len(e.allocatedDevices()) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Second)
	}
	if left := e.allocatedDevices(); len(left) > 0 {
		t.Errorf("devices still allocated after the Pod was deleted: %v", left)
	}
}

func (e *env) webPods() []string {
	out := e.mustKubectl("", "get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}")
	return strings.Fields(out)
}

// churn creates and deletes n small enclave Pods, two at a time, and then
// checks that nothing is left (QEMU, launchers, shims, cgroups, mounts,
// network namespaces, cache temporary files, device allocations) and that
// the long-lived components' memory did not grow.
func (e *env) churn(n int) {
	t := e.t
	base := e.nodeSnapshot()
	dpBefore, whBefore := processRSSKiB("nitropod-device-plugin"), processRSSKiB("nitropod-webhook")
	var shimRSS, launcherRSS, dpRSS, whRSS []int
	var mu sync.Mutex
	start := time.Now()
	for i := 0; i < n; i += 2 {
		var wg sync.WaitGroup
		for j := i; j < i+2 && j < n; j++ {
			name := fmt.Sprintf("churn-%d", j)
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.mustKubectl(busyboxEnclavePod(name, "2", []string{"sh", "-c", "echo up; exec sleep 3600"}), "apply", "-f", "-")
				e.waitPod(name, 5*time.Minute, "Ready", ready)
				mu.Lock()
				shimRSS = append(shimRSS, processRSSKiB(nitropod.ShimBinary))
				launcherRSS = append(launcherRSS, processRSSKiB("nitropod-launcher"))
				mu.Unlock()
				e.deleteEnclavePod(name)
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		dpRSS = append(dpRSS, processRSSKiB("nitropod-device-plugin"))
		whRSS = append(whRSS, processRSSKiB("nitropod-webhook"))
	}
	elapsed := time.Since(start)
	// Deleted Pods' shims and sandboxes go a little after the Pods.
	var left []string
	deadline := time.Now().Add(time.Minute)
	for {
		left = base.leftovers(e.nodeSnapshot())
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if len(left) > 0 {
		t.Errorf("after %d Pod create/delete cycles, left behind:\n%s", n, strings.Join(left, "\n"))
	}
	if devs := e.allocatedDevices(); len(devs) > 0 {
		t.Errorf("after the churn kubelet still has enclave devices allocated: %v", devs)
	}
	dpAfter, whAfter := processRSSKiB("nitropod-device-plugin"), processRSSKiB("nitropod-webhook")
	t.Logf("BENCH churn: %d Pod create/delete cycles (2 at a time) in %.0fs", n, elapsed.Seconds())
	t.Logf("BENCH churn: device plugin RSS %d -> %d (half-way) -> %d KiB, webhook RSS %d -> %d (half-way) -> %d KiB",
		dpBefore, mid(dpRSS), dpAfter, whBefore, mid(whRSS), whAfter)
	t.Logf("BENCH churn: total shim RSS per sample first/last %d/%d KiB, launcher %d/%d KiB",
		first(shimRSS), last(shimRSS), first(launcherRSS), last(launcherRSS))
	for _, c := range []struct {
		what                string
		before, half, after int
	}{{"device plugin", dpBefore, mid(dpRSS), dpAfter}, {"webhook", whBefore, mid(whRSS), whAfter}} {
		// Flat: the Go heap and TLS buffers settle during the first
		// cycles; after that, the second half must not add what a leak
		// per Pod would (allowing GC noise).
		if c.half > 0 && c.after > c.half+8<<10 {
			t.Errorf("%s RSS grew from %d KiB half-way to %d KiB after %d Pods", c.what, c.half, c.after, n)
		}
		if c.before > 0 && c.after > 2*c.before+16<<10 {
			t.Errorf("%s RSS grew from %d to %d KiB over %d Pods", c.what, c.before, c.after, n)
		}
	}
}

func mid(s []int) int {
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func first(s []int) int {
	if len(s) == 0 {
		return 0
	}
	return s[0]
}

func last(s []int) int {
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1]
}

// nodeState is what a node holds for running enclave Pods.
type nodeState struct {
	processes, cgroups, mounts, netns, cacheTemps map[string]bool
}

func (e *env) nodeSnapshot() nodeState {
	s := nodeState{processes: map[string]bool{}, cgroups: map[string]bool{}, mounts: map[string]bool{}, netns: map[string]bool{}, cacheTemps: map[string]bool{}}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cl := strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
		for _, what := range []string{"qemu-system", "nitropod-launcher", nitropod.ShimBinary} {
			if strings.Contains(cl, what) && strings.Contains(cl, e.dir) || strings.Contains(cl, what) && strings.Contains(cl, e.runDir) {
				s.processes[filepath.Dir(p)+": "+cl] = true
			}
		}
	}
	// The enclave cgroups, in any v1 hierarchy or the v2 one.
	for _, c := range shimtest.NodeCgroupfs().Glob("/nitropod/k8s.io/*") {
		s.cgroups[c] = true
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(mi), "\n") {
			if strings.Contains(l, e.dir) && strings.Contains(l, "/rootfs") {
				s.mounts[l] = true
			}
		}
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, en := range ents {
			if strings.HasPrefix(en.Name(), "cni-") {
				s.netns[en.Name()] = true
			}
		}
	}
	_ = filepath.WalkDir(e.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "eif-cache") && (strings.HasSuffix(p, ".tmp") || strings.Contains(filepath.Base(p), ".tmp-")) {
			s.cacheTemps[p] = true
		}
		return nil
	})
	return s
}

// leftovers lists what now has that the baseline had not.
func (base nodeState) leftovers(now nodeState) []string {
	var out []string
	for _, c := range []struct {
		kind      string
		was, have map[string]bool
	}{
		{"process", base.processes, now.processes}, {"cgroup", base.cgroups, now.cgroups},
		{"mount", base.mounts, now.mounts}, {"network namespace", base.netns, now.netns},
		{"cache temporary file", base.cacheTemps, now.cacheTemps},
	} {
		for k := range c.have {
			if !c.was[k] {
				out = append(out, c.kind+": "+k)
			}
		}
	}
	return out
}

// allocatedDevices asks kubelet's pod-resources API (with the shim's own
// client) which Pods hold enclave devices.
func (e *env) allocatedDevices() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all, err := fetch.AllPodDevices(ctx, cluster.PodResourcesSocket(e.dir))
	if err != nil {
		e.t.Fatalf("kubelet's pod-resources API: %v", err)
	}
	var out []string
	for pod, ctrs := range all {
		for ctr, devs := range ctrs {
			for r, ids := range devs {
				if strings.HasPrefix(r, "nitropod.io/") {
					out = append(out, fmt.Sprintf("%s %s %s: %v", pod, ctr, r, ids))
				}
			}
		}
	}
	return out
}

// processRSSKiB sums the resident memory of the processes whose program
// (argv[0]'s base name) is name; 0 when none runs.
func processRSSKiB(name string) int {
	total := 0
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cl, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || len(cl) == 0 {
			continue
		}
		argv0, _, _ := strings.Cut(string(cl), "\x00")
		if filepath.Base(argv0) != name {
			continue
		}
		st, err := os.ReadFile(filepath.Join(p, "status"))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kib, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
				total += kib
			}
		}
	}
	return total
}
