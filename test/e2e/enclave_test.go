//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/cluster"
)

// startNitroCluster is startCluster (plus kube-controller-manager) with
// nitropod installed from deploy/'s chart: the nitro runtime in containerd
// (the node installer's lines), the RuntimeClass, the webhook Deployment and
// its MutatingWebhookConfiguration, and the device plugin DaemonSet over a
// FAKE Nitro pool of 2 enclave CPUs (one core) and 4 GiB. The shim enforces
// licences: it trusts only an issuer key made for this run (e.issuer).
func startNitroCluster(t *testing.T) *env { return startNitroClusterPool(t, "") }

// startNitroClusterPool is startNitroCluster over the FAKE enclave cpu pool
// pool ("" for the default of one core, "1,5").
func startNitroClusterPool(t *testing.T, pool string) *env {
	t.Helper()
	testenv.Integration(t)
	testenv.RequireRoot(t)
	blobs := testenv.EmuBlobs(t)
	for _, b := range []string{"helm", "kube-controller-manager", "nitropod-webhook", "nitropod-device-plugin", "nitropod-init", "nitropod-launcher", "nitropod", "qemu-system-x86_64"} {
		testenv.Binary(t, b)
	}
	opts := clusterOptions(t, true)
	opts.ControllerManager = true
	dir, err := os.MkdirTemp("", "nitropod-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(t, dir) })
	opts.Dir = dir
	opts.ShimConfig = filepath.Join(dir, "nitropod", "shim.toml")
	runDir, err := os.MkdirTemp("/run", "npe2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	// A fresh EIF cache: the first nginx Pod must miss it, the second hit.
	cache := filepath.Join(dir, "eif-cache")
	bin := filepath.Dir(testenv.Binary(t, "nitropod-init"))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	issuer, err := cluster.NewIssuer(ctx, testenv.Binary(t, "nitropod"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.ShimConfig(opts.ShimConfig, bin, blobs, cache, runDir, issuer.PublicKey, cluster.PodResourcesSocket(dir)); err != nil {
		t.Fatal(err)
	}
	e := startCluster(t, opts)
	e.issuer = issuer
	start := time.Now()
	if err := e.c.InstallNitropod(ctx, cluster.NitropodOptions{
		Chart:     filepath.Join(testenv.RepoRoot(), "deploy", "helm", "nitropod"),
		InCluster: true,
		BinDir:    bin,
		FakePool:  pool,
	}); err != nil {
		t.Fatalf("installing nitropod: %v", err)
	}
	t.Logf("nitropod installed in %.1fs", time.Since(start).Seconds())
	e.runDir = runDir
	e.dir = dir
	return e
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestEnclavePods runs the issue's scenarios in order on one cluster.
func TestEnclavePods(t *testing.T) {
	e := startNitroCluster(t)
	nginxPod := readFile(t, filepath.Join("testdata", "nginx-pod.yaml"))

	t.Run("unlabelled Pod runs as an ordinary container", func(t *testing.T) {
		e.sub(t).plainNginx()
	})

	t.Run("deploy/manifests validate against the API server", func(t *testing.T) {
		e := e.sub(t)
		out := e.mustKubectl("", "apply", "--dry-run=server", "-f", filepath.Join(testenv.RepoRoot(), "deploy", "manifests", "nitropod.yaml"))
		for _, want := range []string{"deployment.apps/nitropod-webhook", "daemonset.apps/nitropod-device-plugin", "daemonset.apps/nitropod-node-installer", "runtimeclass.node.k8s.io/nitro", "clusterrolebinding.rbac.authorization.k8s.io/nitropod-webhook-cabundle"} {
			if !strings.Contains(out, want) {
				t.Errorf("kubectl apply --dry-run=server of deploy/manifests/nitropod.yaml does not list %s:\n%s", want, out)
			}
		}
	})

	t.Run("the node advertises the fake pool as the three enclave resources", func(t *testing.T) {
		e := e.sub(t)
		// The fake Nitro host (test/cluster): pool "1,5" is one core of two
		// hyperthreads, 4096 MiB of hugepages are 64 blocks of 64 MiB, and
		// a node has the default 4 enclave slots.
		want := map[string]int64{
			nitropod.ResourceEnclaveCPU:    2,
			nitropod.ResourceEnclaveMemory: 4096 / nitropod.DefaultMemoryBlockMiB,
			nitropod.ResourceEnclave:       nitropod.DefaultEnclaveSlots,
		}
		var got string
		deadline := time.Now().Add(time.Minute)
		for {
			var node corev1.Node
			out := e.mustKubectl("", "get", "node", e.c.NodeName, "-o", "json")
			if err := jsonUnmarshal(out, &node); err != nil {
				t.Fatal(err)
			}
			ok := true
			got = ""
			for r, n := range want {
				c, a := node.Status.Capacity[corev1.ResourceName(r)], node.Status.Allocatable[corev1.ResourceName(r)]
				got += fmt.Sprintf(" %s: capacity %s allocatable %s;", r, c.String(), a.String())
				ok = ok && c.Value() == n && a.Value() == n
			}
			if ok {
				t.Logf("node %s:%s", e.c.NodeName, got)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s:%s want capacity = allocatable = %v", e.c.NodeName, got, want)
			}
			time.Sleep(time.Second)
		}
	})

	t.Run("odd CPUs are refused by the webhook", func(t *testing.T) {
		odd := strings.Replace(nginxPod, `cpu: "2"`, `cpu: "3"`, 1)
		odd = strings.Replace(odd, "name: nginx-pod\n  labels", "name: odd-pod\n  labels", 1)
		out, err := e.kubectl(odd, "apply", "-f", "-")
		if err == nil {
			t.Fatalf("kubectl apply of a 3-CPU enclave Pod succeeded (%s); want the webhook to refuse it", out)
		}
		msg := err.Error()
		for _, want := range []string{`admission webhook "pods.nitropod.io" denied the request`, "3"} {
			if !strings.Contains(msg, want) {
				t.Errorf("kubectl apply error = %q; want it to contain %q", msg, want)
			}
		}
		if _, err := e.kubectl("", "get", "pod", "odd-pod"); err == nil {
			t.Errorf("refused Pod odd-pod exists")
		}
	})

	// The licence Secret the document asks for, holding a licence signed
	// by the issuer the shim trusts (the shim refuses enclave containers
	// without one).
	lic := e.issue(t, licensee, time.Time{}, time.Now().Add(24*time.Hour))
	e.mustKubectl("", "create", "secret", "generic", nitropod.LicenseSecretName, "--from-file="+nitropod.LicenseSecretKey+"="+lic)
	fullCPU := e.allocatable(nitropod.ResourceEnclaveCPU)

	t.Run("document's nginx Pod runs in an enclave (cold build)", func(t *testing.T) {
		e := e.sub(t)
		e.applyTimed(nginxPod, "nginx-pod", "cold EIF build")
		id := e.checkNginxEnclave("nginx-pod")
		// The cache is fresh: the shim must have built this container's EIF.
		if l := e.imageReady(id); !strings.Contains(l, "cache_hit=false") {
			t.Errorf("the first nginx-pod's container %s did not build its EIF (want cache_hit=false); shim said: %q", id, l)
		}
	})

	t.Run("a Pod that does not fit the enclave CPUs stays Pending, then starts", func(t *testing.T) {
		e := e.sub(t)
		e.mustKubectl(busyboxEnclavePod("waiting-pod", "2", []string{"sh", "-c", "echo waiting-pod started; exec sleep 3600"}), "apply", "-f", "-")
		p := e.waitPod("waiting-pod", 60*time.Second, "unschedulable", func(p *corev1.Pod) bool {
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
					return true
				}
			}
			return false
		})
		msg := conditionMessage(p, corev1.PodScheduled)
		if !strings.Contains(msg, "Insufficient "+nitropod.ResourceEnclaveCPU) {
			t.Errorf("scheduler message = %q; want Insufficient %s", msg, nitropod.ResourceEnclaveCPU)
		}
		// kubelet's record: nginx-pod holds both enclave CPUs of the pool.
		nginxCPUs := e.containerDevices("default", "nginx-pod", "nginx-pod", 30*time.Second)[nitropod.ResourceEnclaveCPU]
		if got := e.heldDevices(nitropod.ResourceEnclaveCPU); len(got) != 2 || len(nginxCPUs) != 2 {
			t.Errorf("kubelet reports %s allocated %v (nginx-pod: %v); want nginx-pod's two, the whole pool (%s)", nitropod.ResourceEnclaveCPU, got, nginxCPUs, fullCPU)
		}
		time.Sleep(5 * time.Second)
		if p, _ := e.pod("waiting-pod"); p == nil || p.Status.Phase != corev1.PodPending {
			t.Errorf("waiting-pod left Pending while nginx-pod holds the enclave CPUs: %v", phase(p))
		}
		e.deleteEnclavePod("nginx-pod")
		e.waitPod("waiting-pod", 8*time.Minute, "Ready after nginx-pod was deleted", ready)
		e.waitLogs("waiting-pod", "waiting-pod started", time.Minute)
		// kubelet admitted waiting-pod only with devices: the pool has two
		// CPUs, so it got exactly those nginx-pod gave back.
		if got := e.containerDevices("default", "waiting-pod", "app", 30*time.Second)[nitropod.ResourceEnclaveCPU]; !cmp.Equal(got, nginxCPUs) {
			t.Errorf("waiting-pod's %s devices = %v; want nginx-pod's released %v", nitropod.ResourceEnclaveCPU, got, nginxCPUs)
		}
		e.deleteEnclavePod("waiting-pod")
		// (The next scenario's Pod asks for the whole pool again: its
		// admission proves these were released.)
		e.waitNoneHeld(nitropod.ResourceEnclaveCPU, 30*time.Second)
	})

	t.Run("crashing app shows restarts and exit code 3", func(t *testing.T) {
		e := e.sub(t)
		e.mustKubectl(busyboxEnclavePod("crash-pod", "2", []string{"sh", "-c", "echo crash-pod says goodbye; exit 3"}), "apply", "-f", "-")
		p := e.waitPod("crash-pod", 8*time.Minute, "restarted after exit 3", func(p *corev1.Pod) bool {
			for _, s := range p.Status.ContainerStatuses {
				if s.RestartCount >= 1 && s.LastTerminationState.Terminated != nil {
					return true
				}
			}
			return false
		})
		st := p.Status.ContainerStatuses[0]
		// Admitted with the whole pool, so the earlier Pods released it.
		if got := e.containerDevices("default", "crash-pod", "app", 30*time.Second)[nitropod.ResourceEnclaveCPU]; len(got) != 2 {
			t.Errorf("crash-pod's %s devices = %v; want the pool's 2", nitropod.ResourceEnclaveCPU, got)
		}
		if code := st.LastTerminationState.Terminated.ExitCode; code != 3 {
			t.Errorf("last exit code = %d; want 3", code)
		}
		get := e.mustKubectl("", "get", "pod", "crash-pod", "--no-headers")
		t.Logf("kubectl get pod crash-pod: %s", strings.TrimSpace(get))
		// NAME READY STATUS RESTARTS [(AGO)] AGE
		if f := strings.Fields(get); len(f) < 4 || f[3] == "0" {
			t.Errorf("kubectl get pod shows no restarts: %q", get)
		}
		desc := e.mustKubectl("", "describe", "pod", "crash-pod")
		if !strings.Contains(desc, "Exit Code:    3") {
			t.Errorf("kubectl describe pod shows no \"Exit Code:    3\":\n%s", desc)
		}
		// (While the current container is itself dead, "previous" is the
		// one before it, which kubelet may have collected already: ask
		// again once the Pod moved on.)
		var logs string
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(2 * time.Second) {
			logs, _ = e.kubectl("", "logs", "crash-pod", "--previous")
			if strings.Contains(logs, "crash-pod says goodbye") {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("kubectl logs --previous = %q for 90s; want the app's output", logs)
				break
			}
		}
		e.deleteEnclavePod("crash-pod")
	})

	t.Run("document's nginx Pod again (EIF cache hit)", func(t *testing.T) {
		e := e.sub(t)
		e.applyTimed(nginxPod, "nginx-pod", "EIF cache hit")
		id := e.checkNginxEnclave("nginx-pod")
		// Same Pod, same image: the shim must reuse the EIF it built for
		// the first nginx-pod. (kubelet orders env vars differently from
		// one Pod to the next, so the key must not depend on env order.)
		if l := e.imageReady(id); !strings.Contains(l, "cache_hit=true") {
			t.Errorf("the re-applied nginx-pod's container %s did not hit the EIF cache; shim said: %q", id, l)
		}
	})

	t.Run("kubelet restart keeps the enclave Pod and its devices", func(t *testing.T) {
		e := e.sub(t)
		before, err := e.pod("nginx-pod")
		if err != nil {
			t.Fatal(err)
		}
		// kubelet's record of nginx-pod's devices, through its
		// pod-resources API (the shim sized the enclave from the same).
		devBefore := e.containerDevices("default", "nginx-pod", "nginx-pod", 30*time.Second)
		if len(devBefore[nitropod.ResourceEnclaveCPU]) != 2 || len(devBefore[nitropod.ResourceEnclave]) != 1 {
			t.Fatalf("kubelet's pod-resources API: nginx-pod has %v; want 2 %s and 1 %s devices", devBefore, nitropod.ResourceEnclaveCPU, nitropod.ResourceEnclave)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		log, err := e.c.DevicePluginLogs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		regBefore := registrations(log)
		allocBefore, err := e.devicePluginAllocations()
		if err != nil {
			t.Fatal(err)
		}
		if err := e.c.RestartKubelet(ctx); err != nil {
			t.Fatalf("restarting kubelet: %v", err)
		}
		// The device plugin registers every resource again: it logs
		// "registered with kubelet" once the new kubelet accepted it. (Right
		// after its restart kubelet may not serve the Pod's log yet.)
		deadline := time.Now().Add(90 * time.Second)
		for {
			var regAfter map[string]int
			if log, err = e.c.DevicePluginLogs(ctx); err == nil {
				regAfter = registrations(log)
				if regAfter[nitropod.ResourceEnclaveCPU] > regBefore[nitropod.ResourceEnclaveCPU] &&
					regAfter[nitropod.ResourceEnclaveMemory] > regBefore[nitropod.ResourceEnclaveMemory] &&
					regAfter[nitropod.ResourceEnclave] > regBefore[nitropod.ResourceEnclave] {
					t.Logf("device plugin registrations before the kubelet restart %v, after %v", regBefore, regAfter)
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("device plugin did not register every resource again within 90s of the kubelet restart (registrations before %v, now %v, log error %v):\n%s", regBefore, regAfter, err, log)
			}
			time.Sleep(time.Second)
		}
		if v := e.allocatable(nitropod.ResourceEnclaveCPU); v == "0" {
			t.Errorf("allocatable %s = 0 after the device plugin registered again", nitropod.ResourceEnclaveCPU)
		}
		// The restarted kubelet restored nginx-pod's allocation (from its
		// checkpoint) rather than allocating anew.
		if devAfter := e.containerDevices("default", "nginx-pod", "nginx-pod", time.Minute); !cmp.Equal(devAfter, devBefore) {
			t.Errorf("kubelet's pod-resources API after its restart: nginx-pod has %v; before %v: want them kept", devAfter, devBefore)
		}
		// ... and did not ask the device plugin again (a fresh allocation
		// from a two-CPU pool could look the same).
		allocAfter, err := e.devicePluginAllocations()
		if err != nil || !cmp.Equal(allocAfter, allocBefore) {
			t.Errorf("device plugin allocations after the kubelet restart = %v (%v); before %v: want no new Allocate calls", allocAfter, err, allocBefore)
		}
		t.Logf("device plugin allocations_total before the kubelet restart %v, after %v", allocBefore, allocAfter)
		after := e.waitPod("nginx-pod", time.Minute, "Ready after kubelet restart", ready)
		if b, a := before.Status.ContainerStatuses[0], after.Status.ContainerStatuses[0]; a.RestartCount != b.RestartCount || a.ContainerID != b.ContainerID {
			t.Errorf("container after kubelet restart = %s (restarts %d); before %s (restarts %d): want the same, untouched", a.ContainerID, a.RestartCount, b.ContainerID, b.RestartCount)
		}
		if got := e.heldDevices(nitropod.ResourceEnclaveCPU); len(got) != 2 {
			t.Errorf("kubelet reports %s allocated after its restart: %v; want nginx-pod's 2 only", nitropod.ResourceEnclaveCPU, got)
		}
		body, err := httpGet(fmt.Sprintf("http://%s:80/", after.Status.PodIP), 30*time.Second)
		if err != nil || !strings.Contains(body, "Welcome to nginx!") {
			t.Errorf("nginx after kubelet restart: %v %q", err, body)
		}
		e.deleteEnclavePod("nginx-pod")
	})

	t.Run("a tampered licence fails visibly and the Pod never becomes Ready", func(t *testing.T) {
		e := e.sub(t)
		// A valid licence with its licensee edited after signing.
		valid := readFile(t, lic)
		tampered := strings.Replace(valid, "licensee: "+licensee+"\n", "licensee: Tampered Corp\n", 1)
		if tampered == valid {
			t.Fatalf("the issued licence has no line %q to tamper with:\n%s", "licensee: "+licensee, valid)
		}
		p := filepath.Join(t.TempDir(), "tampered-license.yaml")
		if err := os.WriteFile(p, []byte(tampered), 0o600); err != nil {
			t.Fatal(err)
		}
		e.licenceRefused("licence-tampered", p, `licence for "Tampered Corp" is not signed by a trusted key`)
	})

	t.Run("an expired licence fails visibly and the Pod never becomes Ready", func(t *testing.T) {
		e := e.sub(t)
		now := time.Now().UTC().Truncate(time.Second)
		p := e.issue(t, licensee, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
		e.licenceRefused("licence-expired", p, fmt.Sprintf("licence for %q expired on", licensee))
	})
}

// licensee is who the e2e run's licences are issued to.
const licensee = "nitropod e2e"

// issue writes a licence signed by the cluster's trusted issuer (issued
// zero: now) and returns its path.
func (e *env) issue(t *testing.T, who string, issued, expires time.Time) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "anjuna-license.yaml")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.issuer.Issue(ctx, p, who, issued, expires); err != nil {
		t.Fatal(err)
	}
	return p
}

// licenceRefused creates namespace ns whose anjuna-license Secret holds the
// licence file lic, applies a managed busybox Pod there, and checks that the
// shim's refusal (want) reaches `kubectl describe pod` while the Pod never
// becomes Ready and no enclave boots. The Pod and namespace are deleted
// afterwards and the enclave CPUs must be free again.
func (e *env) licenceRefused(ns, lic, want string) {
	t := e.t
	t.Helper()
	const name = "licensed-pod"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.c.PrepareNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, err := e.kubectl("", "delete", "namespace", ns, "--wait=false"); err != nil {
			t.Errorf("deleting namespace %s: %v", ns, err)
		}
	}()
	e.mustKubectl("", "-n", ns, "create", "secret", "generic", nitropod.LicenseSecretName, "--from-file="+nitropod.LicenseSecretKey+"="+lic)
	e.mustKubectl(busyboxEnclavePod(name, "2", []string{"sh", "-c", "echo licensed-pod started; exec sleep 3600"}), "-n", ns, "apply", "-f", "-")
	defer func() {
		e.mustKubectl("", "-n", ns, "delete", "pod", name, "--wait=false")
		deadline := time.Now().Add(3 * time.Minute)
		for {
			_, err := e.kubectl("", "-n", ns, "get", "pod", name)
			if err != nil && strings.Contains(err.Error(), "NotFound") {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("pod %s/%s still exists 3m after it was deleted", ns, name)
				return
			}
			time.Sleep(time.Second)
		}
		e.waitNoneHeld(nitropod.ResourceEnclaveCPU, 30*time.Second)
	}()

	// The shim checks the licence before it builds or boots anything, so
	// the refusal comes within seconds of the container's start.
	var desc string
	deadline := time.Now().Add(3 * time.Minute)
	for {
		desc, _ = e.kubectl("", "-n", ns, "describe", "pod", name)
		if strings.Contains(desc, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl describe pod %s/%s does not show %q after 3m:\n%s", ns, name, want, desc)
		}
		time.Sleep(2 * time.Second)
	}
	for _, l := range grepLines(desc, want) {
		t.Logf("kubectl describe pod %s/%s: %s", ns, name, strings.TrimSpace(l))
	}
	// Kubelet retries the container (CrashLoopBackOff); it must keep
	// failing the same way, never run, and never become Ready.
	var pod corev1.Pod
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		out, err := e.kubectl("", "-n", ns, "get", "pod", name, "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		if err := jsonUnmarshal(out, &pod); err != nil {
			t.Fatal(err)
		}
		if ready(&pod) {
			t.Fatalf("pod %s/%s with a refused licence became Ready", ns, name)
		}
		for _, s := range pod.Status.ContainerStatuses {
			if s.State.Running != nil {
				t.Fatalf("container %s of %s/%s with a refused licence is running (%s)", s.Name, ns, name, s.ContainerID)
			}
			if _, qemu := enclaveProcesses(s.ContainerID); qemu {
				t.Fatalf("an emulated enclave runs for %s/%s although its licence was refused", ns, name)
			}
		}
	}
	if logs, _ := e.kubectl("", "-n", ns, "logs", name); strings.Contains(logs, "licensed-pod started") {
		t.Errorf("the app of %s/%s ran although its licence was refused: %q", ns, name, logs)
	}
	if st := pod.Status.ContainerStatuses; len(st) > 0 && st[0].State.Waiting != nil {
		t.Logf("pod %s/%s container state: Waiting (%s)", ns, name, st[0].State.Waiting.Reason)
	}
}

// sub is e for a subtest.
func (e *env) sub(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// applyTimed applies a Pod and waits until Ready, logging the time as a
// BENCH line that hack/e2e.sh collects. (Ready comes when the shim has the
// EIF and started the launcher; the enclave boots after that, so
// checkNginxEnclave also logs the time to the first page served.)
func (e *env) applyTimed(manifest, name, what string) time.Duration {
	e.t.Helper()
	start := time.Now()
	e.applied = start
	e.mustKubectl(manifest, "apply", "-f", "-")
	e.waitPod(name, 10*time.Minute, "Ready", ready)
	d := time.Since(start)
	e.t.Logf("BENCH e2e: kubectl apply -> Ready, %s (%s): %.1fs", name, what, d.Seconds())
	return d
}

// checkNginxEnclave checks a Ready nginx Pod converted by the webhook: the
// enclave resources, the emulated enclave sized by kubelet's allocation, the
// page on POD_IP:80, and nginx's output in logs. It returns the container ID.
func (e *env) checkNginxEnclave(name string) string {
	t := e.t
	t.Helper()
	p, err := e.pod(name)
	if err != nil {
		t.Fatal(err)
	}
	if rc := p.Spec.RuntimeClassName; rc == nil || *rc != nitropod.RuntimeClassName {
		t.Errorf("runtimeClassName = %v; want %q (the webhook converts managed Pods)", rc, nitropod.RuntimeClassName)
	}
	lim := p.Spec.Containers[0].Resources.Limits
	if q := lim[corev1.ResourceName(nitropod.ResourceEnclaveCPU)]; q.Value() != 2 {
		t.Errorf("limits[%s] = %s; want 2", nitropod.ResourceEnclaveCPU, q.String())
	}
	if q := lim[corev1.ResourceName(nitropod.ResourceEnclaveMemory)]; q.Value() != 2048/nitropod.DefaultMemoryBlockMiB {
		t.Errorf("limits[%s] = %s; want %d", nitropod.ResourceEnclaveMemory, q.String(), 2048/nitropod.DefaultMemoryBlockMiB)
	}
	if p.Spec.NodeName != e.c.NodeName {
		t.Errorf("scheduled on %q; want %q", p.Spec.NodeName, e.c.NodeName)
	}
	body, err := httpGet(fmt.Sprintf("http://%s:80/", p.Status.PodIP), 90*time.Second)
	if err != nil {
		t.Fatalf("GET http://%s:80/: %v", p.Status.PodIP, err)
	}
	if !e.applied.IsZero() {
		t.Logf("BENCH e2e: kubectl apply -> first page from the enclave, %s: %.1fs", name, time.Since(e.applied).Seconds())
	}
	id := p.Status.ContainerStatuses[0].ContainerID
	// The shim logs how it got the EIF (built or cache hit) and how long
	// that took.
	t.Logf("BENCH e2e: shim: %s", e.imageReady(id))
	if _, qemu := enclaveProcesses(id); !qemu {
		out, _ := exec.Command("sh", "-c", "ps -eo pid,ppid,args | grep -E 'qemu|nitropod-launcher' | grep -v grep").Output()
		t.Errorf("no emulated enclave (QEMU below the launcher of %s) runs for %s; processes:\n%s", id, name, out)
	} else {
		e.checkEnclaveSize(name, p.Spec.Containers[0].Name, id, 2, 2048)
	}
	if !strings.Contains(body, "Welcome to nginx!") {
		t.Errorf("GET / = %q; want nginx's welcome page", body)
	}
	e.waitLogs(name, `"GET / HTTP/1.1" 200`, 30*time.Second)
	return id
}

// checkEnclaveSize checks that the emulated enclave of the container got
// exactly the vCPUs and memory of the allocation kubelet's pod-resources
// API reports for it, and that this allocation is what the Pod asked for
// (wantCPUs, wantMiB).
func (e *env) checkEnclaveSize(pod, container, id string, wantCPUs, wantMiB int) {
	t := e.t
	t.Helper()
	d := e.containerDevices("default", pod, container, 30*time.Second)
	cpus, mem, err := enclaveSize(d)
	if err != nil {
		t.Fatalf("%s's allocation %v: %v", pod, d, err)
	}
	if cpus != wantCPUs || mem != wantMiB {
		t.Errorf("kubelet allocated %s %d vCPUs and %d MiB (%v); want the Pod's %d and %d MiB", pod, cpus, mem, d, wantCPUs, wantMiB)
	}
	qc, qm, cmdline, err := qemuSize(id)
	if err != nil {
		t.Errorf("%s: %v", pod, err)
		return
	}
	if qc != cpus || qm != mem {
		t.Errorf("the enclave of %s runs with -smp %d -m %d; want kubelet's allocation, %d vCPUs and %d MiB (%v)\nQEMU: %s", pod, qc, qm, cpus, mem, d, cmdline)
	}
	t.Logf("%s: kubelet allocated %v; QEMU runs with -smp %d -m %d", pod, d, qc, qm)
}

// waitLogs waits until kubectl logs of the Pod contains want.
func (e *env) waitLogs(name, want string, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var logs string
	for time.Now().Before(deadline) {
		logs, _ = e.kubectl("", "logs", name)
		if strings.Contains(logs, want) {
			return
		}
		time.Sleep(time.Second)
	}
	e.t.Errorf("kubectl logs %s = %q; want it to contain %q", name, logs, want)
}

// deleteEnclavePod deletes a Pod and checks that its enclave ended.
func (e *env) deleteEnclavePod(name string) {
	e.t.Helper()
	var ids []string
	if p, err := e.pod(name); err == nil {
		for _, s := range p.Status.ContainerStatuses {
			ids = append(ids, s.ContainerID)
		}
	}
	e.mustKubectl("", "delete", "pod", name, "--wait=false")
	e.waitGone(name, 3*time.Minute)
	deadline := time.Now().Add(30 * time.Second)
	for _, id := range ids {
		for {
			pids, _ := enclaveProcesses(id)
			if len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				e.t.Errorf("enclave processes %v of %s still run 30s after the Pod was deleted", pids, name)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// enclaveProcesses lists the processes of a container's emulated enclave:
// the launcher (its command line names the container's bundle, which holds
// the container ID) and the QEMU processes below it. qemu reports whether
// at least one QEMU is among them.
func enclaveProcesses(containerID string) (pids []int, qemu bool) {
	containerID = strings.TrimPrefix(containerID, "containerd://")
	if containerID == "" {
		return nil, false
	}
	entries, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	cmd := map[int]string{}
	for _, en := range entries {
		var pid int
		if _, err := fmt.Sscan(en.Name(), &pid); err != nil {
			continue
		}
		c, err := os.ReadFile(filepath.Join("/proc", en.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd[pid] = strings.ReplaceAll(string(c), "\x00", " ")
		st, _ := os.ReadFile(filepath.Join("/proc", en.Name(), "stat"))
		if i := strings.LastIndexByte(string(st), ')'); i > 0 {
			var state string
			var ppid int
			_, _ = fmt.Sscan(string(st[i+1:]), &state, &ppid)
			parent[pid] = ppid
		}
	}
	in := func(pid int) bool {
		for p := pid; p > 1; p = parent[p] {
			if strings.Contains(cmd[p], containerID) && !strings.Contains(cmd[p], "containerd-shim") {
				return true
			}
		}
		return false
	}
	for pid, c := range cmd {
		if in(pid) {
			pids = append(pids, pid)
			if strings.Contains(c, "qemu-system") {
				qemu = true
			}
		}
	}
	return pids, qemu
}

func (e *env) allocatable(resource string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, _ := e.c.Allocatable(ctx, resource)
	return v
}

func conditionMessage(p *corev1.Pod, t corev1.PodConditionType) string {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return c.Message
		}
	}
	return ""
}

// busyboxEnclavePod is a managed busybox Pod with cpus enclave vCPUs.
func busyboxEnclavePod(name, cpus string, command []string) string {
	q := make([]string, len(command))
	for i, c := range command {
		q[i] = fmt.Sprintf("%q", c)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels:
    nitro.k8s.anjuna.io/managed: "yes"
spec:
  containers:
  - name: app
    image: busybox:latest
    command: [%s]
    resources:
      limits: {cpu: %q, memory: 256Mi}
    volumeMounts:
    - {name: anjuna-license, mountPath: /opt/anjuna, readOnly: true}
  volumes:
  - name: anjuna-license
    secret: {secretName: anjuna-license}
`, name, strings.Join(q, ", "), cpus)
}

func grepLines(text, substr string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}
