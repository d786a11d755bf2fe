package shim

import (
	"encoding/json"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

// replicaSpec is the OCI spec containerd writes for one replica of a
// Deployment whose container has MODE (literal), DB_PASSWORD (secretKeyRef),
// POD_NAME (fieldRef), CFG_* (envFrom with a prefix) and a ConfigMap volume.
func replicaSpec(pod, uid, secret string, services []string) *specs.Spec {
	d := map[string]contract.ContainerDelivery{"app": {
		Literal: []string{"MODE"}, Env: []string{"DB_PASSWORD", "POD_NAME"}, EnvFrom: []string{"CFG_"},
		Mounts: []contract.Mount{{Path: "/etc/app", Kind: contract.VolumeConfigMap, Volume: "cfg", ReadOnly: true}},
	}}
	env := []string{"PATH=/usr/bin:/bin", "HOSTNAME=" + pod, "MODE=prod", "DB_PASSWORD=" + secret, "POD_NAME=" + pod, "CFG_LEVEL=info",
		nitropod.EnvCPUIDs + "=2,3", nitropod.EnvMemoryMiB + "=512", nitropod.EnvEnclaveSlot + "=1"}
	env = append(env, services...)
	root := "/var/lib/kubelet/pods/" + uid
	return &specs.Spec{
		Hostname: pod,
		Annotations: map[string]string{
			nitropod.CRIContainerType: nitropod.CRIContainerTypeApp, nitropod.CRIContainerName: "app",
			nitropod.CRISandboxName: pod, nitropod.CRISandboxNamespace: "ns", nitropod.CRISandboxUID: uid,
			nitropod.EnclavesAnnotation: `{"app":{"cpu":2,"memoryMiB":512}}`,
			nitropod.DeliveryAnnotation: contract.MarshalDelivery(d),
		},
		Process: &specs.Process{Args: []string{"/app"}, Env: env, Cwd: "/"},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/etc/hosts", Type: "bind", Source: root + "/etc-hosts", Options: []string{"rbind"}},
			{Destination: "/etc/resolv.conf", Type: "bind", Source: "/var/lib/containerd/sandboxes/" + uid + "/resolv.conf", Options: []string{"rbind"}},
			{Destination: "/etc/app", Type: "bind", Source: root + "/volumes/kubernetes.io~configmap/cfg", Options: []string{"rbind", "ro"}},
			{Destination: "/dev/termination-log", Type: "bind", Source: root + "/containers/app/1234"},
		},
	}
}

// TestReplicasMeasureAlike: two replicas of one template — different Pod
// names and hostnames, Secret values, service links, device allocations and
// env order — get the same measured process, and everything that differs is
// on the delivered side.
func TestReplicasMeasureAlike(t *testing.T) {
	a := replicaSpec("web-7d9f-aaaaa", "uid-a", "s3cret", []string{"KUBERNETES_SERVICE_HOST=10.0.0.1", "KUBERNETES_PORT_443_TCP=tcp://10.0.0.1:443"})
	b := replicaSpec("web-7d9f-bbbbb", "uid-b", "rotated", []string{"REDIS_SERVICE_HOST=10.0.0.9", "REDIS_PORT=tcp://10.0.0.9:6379", "KUBERNETES_SERVICE_HOST=10.0.0.1"})
	slices.Reverse(b.Process.Env)
	pa, err := PlanContainer(a, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	pb, err := PlanContainer(b, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(pa.Process)
	jb, _ := json.Marshal(pb.Process)
	if string(ja) != string(jb) {
		t.Fatalf("replicas measure differently:\n%s\n%s", ja, jb)
	}
	if want := []string{"MODE=prod", "PATH=/usr/bin:/bin"}; !slices.Equal(pa.Process.Env, want) {
		t.Errorf("measured env = %q, want %q", pa.Process.Env, want)
	}
	if pa.Process.Hostname != "" || pa.Deliver.Hostname != "web-7d9f-aaaaa" {
		t.Errorf("hostname measured %q delivered %q", pa.Process.Hostname, pa.Deliver.Hostname)
	}
	want := []string{"CFG_LEVEL", "DB_PASSWORD", "HOSTNAME", "KUBERNETES_PORT_443_TCP", "KUBERNETES_SERVICE_HOST",
		nitropod.EnvCPUIDs, nitropod.EnvEnclaveSlot, nitropod.EnvMemoryMiB, "POD_NAME"}
	if !slices.Equal(pa.Deliver.Env, want) {
		t.Errorf("delivered env = %q, want %q", pa.Deliver.Env, want)
	}
	var paths []string
	for _, m := range pa.Deliver.Mounts {
		paths = append(paths, m.Path)
	}
	if want := []string{"/etc/hosts", "/etc/resolv.conf", "/etc/app"}; !slices.Equal(paths, want) {
		t.Errorf("delivered mounts = %q, want %q", paths, want)
	}
	pol := pa.Process.Delivery
	if pol == nil || pol.Any || pol.CheckEnv("DB_PASSWORD", nil) != nil || pol.CheckEnv("LD_PRELOAD", nil) == nil || pol.CheckMount("/etc/app") != nil {
		t.Errorf("policy = %+v", pol)
	}
	// The device allocation is still cross-checked.
	if err := pa.ApplyAllocation(contract.Allocation{CPUIDs: []int{2, 3}, MemoryMiB: 512, Slot: 1}); err != nil {
		t.Errorf("allocation: %v", err)
	}
	// A literal value changes the measurement.
	c := replicaSpec("web-7d9f-ccccc", "uid-c", "s3cret", nil)
	c.Process.Env[2] = "MODE=staging"
	pc, err := PlanContainer(c, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if jc, _ := json.Marshal(pc.Process); string(jc) == string(ja) {
		t.Error("a different literal env value measures the same")
	}
}
