package shim

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/shim/deliver"
)

func testSpec(ann map[string]string, env ...string) *specs.Spec {
	return &specs.Spec{
		Hostname:    "pod-a",
		Annotations: ann,
		Process: &specs.Process{
			Args: []string{"sh", "-c", "echo hi"},
			Env:  env,
			Cwd:  "/work",
			User: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 10}},
		},
	}
}

func TestPlanContainer(t *testing.T) {
	cfg := DefaultConfig()
	cri := func(kind, name string, extra map[string]string) map[string]string {
		m := map[string]string{nitropod.CRIContainerType: kind, nitropod.CRIContainerName: name, nitropod.CRISandboxID: "sb",
			nitropod.CRISandboxNamespace: "ns", nitropod.CRISandboxName: "pod"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	enclaves := `{"app":{"cpu":4,"memoryMiB":2048,"ports":[8080,80,80],"debug":false},"other":{"cpu":2,"memoryMiB":512}}`
	tests := []struct {
		name string
		spec *specs.Spec
		want Plan
	}{
		{
			name: "pause container runs through runc",
			spec: testSpec(cri(nitropod.CRIContainerTypePod, "", nil)),
			want: Plan{},
		},
		{
			name: "app container not listed by the webhook runs through runc",
			spec: testSpec(cri(nitropod.CRIContainerTypeApp, "sidecar", map[string]string{nitropod.EnclavesAnnotation: enclaves})),
			want: Plan{},
		},
		{
			name: "direct use (ctr run): config defaults",
			spec: testSpec(nil, "PATH=/bin"),
			want: Plan{Enclave: true, CPUs: 2, MemoryMiB: 512, PortsFromImage: true, Process: ramdisk.Process{
				Args: []string{"sh", "-c", "echo hi"}, Env: []string{"PATH=/bin"}, Cwd: "/work", UID: 1000, GID: 1000,
				AdditionalGIDs: []uint32{10},
			}},
		},
		{
			name: "webhook annotation lists ports but does not size the enclave",
			spec: testSpec(cri(nitropod.CRIContainerTypeApp, "app", map[string]string{nitropod.EnclavesAnnotation: enclaves}), "A=1"),
			want: Plan{Enclave: true, CPUs: 2, MemoryMiB: 512, Pod: PodRef{"ns", "pod", "app"}, Ports: []uint16{80, 8080}, Process: ramdisk.Process{
				Args: []string{"sh", "-c", "echo hi"}, Env: []string{"A=1"}, Cwd: "/work", UID: 1000, GID: 1000,
				AdditionalGIDs: []uint32{10}, Ports: []uint16{80, 8080},
			}},
		},
		{
			name: "device plugin env neither sizes the enclave nor enters the measured env; debug mode",
			spec: testSpec(cri(nitropod.CRIContainerTypeApp, "app", map[string]string{nitropod.EnclavesAnnotation: enclaves}),
				"A=1", nitropod.EnvCPUIDs+"=2-3,6,7", nitropod.EnvMemoryMiB+"=1024", nitropod.EnvEnclaveSlot+"=1", nitropod.DebugModeEnv+"=yes"),
			want: Plan{Enclave: true, CPUs: 2, MemoryMiB: 512, Pod: PodRef{"ns", "pod", "app"}, Debug: true, Ports: []uint16{80, 8080},
				Deliver: deliver.Plan{Env: []string{nitropod.EnvCPUIDs, nitropod.EnvEnclaveSlot, nitropod.EnvMemoryMiB}}, Process: ramdisk.Process{
					Args: []string{"sh", "-c", "echo hi"}, Env: []string{"A=1", nitropod.DebugModeEnv + "=yes"}, Cwd: "/work", UID: 1000, GID: 1000,
					AdditionalGIDs: []uint32{10}, Ports: []uint16{80, 8080}, Exec: &contract.ExecPolicy{Any: true},
				}},
		},
		{
			name: "debug only with the exact value",
			spec: testSpec(nil, nitropod.DebugModeEnv+"=true"),
			want: Plan{Enclave: true, CPUs: 2, MemoryMiB: 512, PortsFromImage: true, Process: ramdisk.Process{
				Args: []string{"sh", "-c", "echo hi"}, Env: []string{nitropod.DebugModeEnv + "=true"}, Cwd: "/work", UID: 1000, GID: 1000,
				AdditionalGIDs: []uint32{10},
			}},
		},
		{
			name: "imageLocation is passed on",
			spec: testSpec(map[string]string{nitropod.ImageLocationAnnotation: "s3://b/k.eif"}),
			want: Plan{Enclave: true, CPUs: 2, MemoryMiB: 512, PortsFromImage: true, ImageLocation: "s3://b/k.eif", Process: ramdisk.Process{
				Args: []string{"sh", "-c", "echo hi"}, Cwd: "/work", UID: 1000, GID: 1000,
				AdditionalGIDs: []uint32{10},
			}},
		},
	}
	for _, tc := range tests {
		if tc.want.Enclave {
			// The hostname is delivered; the EIF records the policy.
			tc.want.Deliver.Hostname = "pod-a"
			tc.want.Deliver.MaxBytes = contract.DefaultMaxDeliveredBytes
			pol := contract.DefaultPolicy()
			if tc.want.Debug {
				pol = contract.DeliveryPolicy{Any: true}
			}
			tc.want.Process.Delivery = &pol
		}
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlanContainer(tc.spec, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreUnexported(Plan{})); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlanContainerErrors(t *testing.T) {
	cfg := DefaultConfig()
	tests := []struct {
		name, want string
		spec       *specs.Spec
	}{
		{"bad annotation", nitropod.EnclavesAnnotation, testSpec(map[string]string{nitropod.CRIContainerType: nitropod.CRIContainerTypeApp, nitropod.EnclavesAnnotation: "{"})},
		{"annotation of an impossible size", "cpu 3 is not an even number", testSpec(map[string]string{nitropod.CRIContainerType: nitropod.CRIContainerTypeApp, nitropod.CRIContainerName: "a",
			nitropod.EnclavesAnnotation: `{"a":{"cpu":3,"memoryMiB":64}}`})},
		{"no args", "no process args", &specs.Spec{Process: &specs.Process{}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PlanContainer(tc.spec, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	got, err := ParseConfig([]byte(`
backend = "nitro-cli"
blobs_dir = "/b"
init_path = "/i"
cache_dir = "/c"
cache_max_bytes = 1000
nitro_cli = "/usr/bin/nitro-cli"
default_cpus = 4
default_memory_mib = 1024
max_delivered_bytes = 1048576
[allocation]
pod_resources_socket = "/k/pod-resources/kubelet.sock"
[qemu]
binary = "/q"
accel = "kvm"
`), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Backend: "nitro-cli", BlobsDir: "/b", InitPath: "/i", CacheDir: "/c", CacheMaxBytes: 1000,
		QEMU: QEMUConfig{Binary: "/q", Accel: "kvm"}, NitroCLI: "/usr/bin/nitro-cli", NitroCgroup: "nitropod-enclaves", DefaultCPUs: 4, DefaultMemoryMiB: 1024, RunDir: DefaultConfig().RunDir, MaxDeliveredBytes: 1 << 20,
		Allocation: AllocationConfig{Source: AllocationKubelet, PodResourcesSocket: "/k/pod-resources/kubelet.sock"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	for _, bad := range []struct{ in, want string }{
		{`backend = "firecracker"`, `backend "firecracker"`},
		{`bogus = 1`, "unknown setting"},
		{`default_memory_mib = 10`, "default_memory_mib 10"},
		{"[qemu]\naccel = \"hvf\"", `qemu.accel "hvf"`},
		{"backend = \"nitro-cli\"\nnitro_cgroup = \"../kubepods\"", `nitro-cli cgroup "../kubepods"`},
		{`cache_max_bytes = -1`, "cache_max_bytes -1"},
		{"[allocation]\nsource = \"env\"", `allocation.source "env" is not supported`},
		{"[allocation]\npod_resources_socket = \"kubelet.sock\"", `must be an absolute path`},
		{`backend = `, "parsing shim config"},
		{`max_delivered_bytes = 1099511627776`, "max_delivered_bytes = 1099511627776"},
	} {
		_, err := ParseConfig([]byte(bad.in), DefaultConfig())
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseConfig(%q) err = %v, want one mentioning %q", bad.in, err, bad.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("backend = \"qemu\"\n[qemu]\naccel = \"tcg\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseConfig(b, DefaultConfig())
	})
}

// The env is measured into the EIF: two specs that differ only in the order
// kubelet emitted the env (it comes from maps) must plan the same process, and
// a later duplicate overrides an earlier one as in containerd's WithEnv.
func TestPlanContainerEnvOrderIsCanonical(t *testing.T) {
	cfg := DefaultConfig()
	a, err := PlanContainer(testSpec(nil, "PATH=/bin", "B=2", "A=1", nitropod.EnvMemoryMiB+"=512", "B=3"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := PlanContainer(testSpec(nil, nitropod.EnvMemoryMiB+"=512", "A=1", "B=2", "B=3", "PATH=/bin"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"A=1", "B=3", "PATH=/bin"}
	if diff := cmp.Diff(want, a.Process.Env); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(a.Process, b.Process); diff != "" {
		t.Errorf("process differs with env order (-a +b):\n%s", diff)
	}
}

// TestApplyAllocation: only the allocation sizes the enclave, and device
// plugin variables a Pod overrode are refused rather than believed.
func TestApplyAllocation(t *testing.T) {
	cfg := DefaultConfig()
	ann := map[string]string{nitropod.CRIContainerType: nitropod.CRIContainerTypeApp, nitropod.CRIContainerName: "app",
		nitropod.CRISandboxNamespace: "ns", nitropod.CRISandboxName: "pod"}
	alloc := contract.Allocation{CPUIDs: []int{2, 3}, MemoryMiB: 1024, Slot: 1}

	// The device plugin's own values agree with kubelet's record.
	p, err := PlanContainer(testSpec(ann, nitropod.EnvCPUIDs+"=2,3", nitropod.EnvMemoryMiB+"=1024", nitropod.EnvEnclaveSlot+"=1"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ApplyAllocation(alloc); err != nil {
		t.Fatal(err)
	}
	if p.CPUs != 2 || !cmp.Equal(p.CPUIDs, []int{2, 3}) || p.MemoryMiB != 1024 || !p.Allocated {
		t.Errorf("plan after allocation: cpus %d %v, memory %d, allocated %t", p.CPUs, p.CPUIDs, p.MemoryMiB, p.Allocated)
	}

	// A Pod author who sets the variables (kubelet puts the container's own
	// env after the device plugin's, so the Pod's value wins) is refused.
	for _, env := range []string{
		nitropod.EnvCPUIDs + "=0-7",
		nitropod.EnvCPUIDs + "=junk",
		nitropod.EnvMemoryMiB + "=65536",
		nitropod.EnvEnclaveSlot + "=3",
	} {
		p, err := PlanContainer(testSpec(ann, env), cfg)
		if err != nil {
			t.Fatal(err)
		}
		err = p.ApplyAllocation(alloc)
		if err == nil || !strings.Contains(err.Error(), "remove them from the Pod") {
			t.Errorf("env %s: error %v, want a refusal", env, err)
		}
		if p.Allocated || p.MemoryMiB != cfg.DefaultMemoryMiB {
			t.Errorf("env %s: the refused plan was sized anyway: %+v", env, p)
		}
	}
}

// TestPlanExecPolicy: the measured exec policy is "any" for a debug
// enclave, the webhook's list for a production CRI container (the Pod's
// own exec-commands annotation is not read for it), and for a container
// created without Kubernetes the annotation's entry named by its id.
func TestPlanExecPolicy(t *testing.T) {
	cfg := DefaultConfig()
	criAnn := map[string]string{nitropod.CRIContainerType: nitropod.CRIContainerTypeApp, nitropod.CRIContainerName: "app",
		nitropod.CRISandboxNamespace: "ns", nitropod.CRISandboxName: "pod",
		nitropod.EnclavesAnnotation:     `{"app":{"cpu":2,"memoryMiB":512,"exec":[["cat","/tmp/ok"]]}}`,
		contract.ExecCommandsAnnotation: `{"app":[["sh"]]}`}
	spec := testSpec(criAnn)
	p, err := PlanContainer(spec, cfg)
	if err == nil {
		err = p.ExecFromAnnotation(spec, "ctr-id")
	}
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&contract.ExecPolicy{Commands: [][]string{{"cat", "/tmp/ok"}}}, p.Process.Exec); diff != "" {
		t.Errorf("CRI container policy (-want +got):\n%s", diff)
	}

	spec = testSpec(map[string]string{contract.ExecCommandsAnnotation: `{"ctr-id":[["sh","-c","exit 4"]],"other":[["sh"]]}`})
	p, err = PlanContainer(spec, cfg)
	if err == nil {
		err = p.ExecFromAnnotation(spec, "ctr-id")
	}
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&contract.ExecPolicy{Commands: [][]string{{"sh", "-c", "exit 4"}}}, p.Process.Exec); diff != "" {
		t.Errorf("ctr container policy (-want +got):\n%s", diff)
	}

	spec = testSpec(map[string]string{contract.ExecCommandsAnnotation: `{"ctr-id":[[""]]}`})
	p, err = PlanContainer(spec, cfg)
	if err == nil {
		err = p.ExecFromAnnotation(spec, "ctr-id")
	}
	if err == nil {
		t.Error("an invalid exec-commands annotation was accepted")
	}

	spec = testSpec(nil, nitropod.DebugModeEnv+"="+nitropod.DebugModeValue)
	if p, err = PlanContainer(spec, cfg); err != nil || p.Process.Exec == nil || !p.Process.Exec.Any {
		t.Errorf("debug container policy %+v, %v: want any", p.Process.Exec, err)
	}
	spec = testSpec(nil)
	if p, err = PlanContainer(spec, cfg); err != nil || p.Process.Exec != nil {
		t.Errorf("production container without a list: policy %+v, %v: want none", p.Process.Exec, err)
	}
}

// The Pod's egress allowlist is measured into the process (normalised);
// an empty one is kept (it allows nothing), a bad one refuses the container.
func TestPlanEgressAllow(t *testing.T) {
	cfg := DefaultConfig()
	p, err := PlanContainer(testSpec(map[string]string{nitropod.EgressAllowAnnotation: "10.96.0.10:53, 10.1.0.0/16"}), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p.Process.EgressAllow == nil || !cmp.Equal(*p.Process.EgressAllow, []string{"10.96.0.10/32:53", "10.1.0.0/16"}) {
		t.Errorf("EgressAllow = %v", p.Process.EgressAllow)
	}
	p, err = PlanContainer(testSpec(map[string]string{nitropod.EgressAllowAnnotation: ""}), cfg)
	if err != nil || p.Process.EgressAllow == nil || len(*p.Process.EgressAllow) != 0 {
		t.Errorf("empty allowlist: %v, %v; want an empty, present list", p.Process.EgressAllow, err)
	}
	p, err = PlanContainer(testSpec(nil), cfg)
	if err != nil || p.Process.EgressAllow != nil {
		t.Errorf("no annotation: %v, %v; want no list", p.Process.EgressAllow, err)
	}
	_, err = PlanContainer(testSpec(map[string]string{nitropod.EgressAllowAnnotation: "example.com:443"}), cfg)
	if err == nil || !strings.Contains(err.Error(), nitropod.EgressAllowAnnotation) {
		t.Errorf("bad allowlist: %v, want an error naming the annotation", err)
	}
}

// The attestation API's port is measured into the process: from the
// webhook's entry for a CRI container (the Pod's own annotation is not
// read), from the container's annotation for direct use.
func TestPlanAttestationPort(t *testing.T) {
	cfg := DefaultConfig()
	criAnn := map[string]string{nitropod.CRIContainerType: nitropod.CRIContainerTypeApp, nitropod.CRIContainerName: "app",
		nitropod.CRISandboxNamespace: "ns", nitropod.CRISandboxName: "pod",
		nitropod.EnclavesAnnotation:        `{"app":{"cpu":2,"memoryMiB":512,"attestationPort":8443}}`,
		contract.AttestationPortAnnotation: "7000"}
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want int
	}{
		{"CRI: the webhook's entry", criAnn, 8443},
		{"direct: the annotation", map[string]string{contract.AttestationPortAnnotation: "off"}, contract.AttestationPortOff},
		{"direct: unset", nil, 0},
	} {
		p, err := PlanContainer(testSpec(tc.ann), cfg)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if p.Process.AttestationPort != tc.want {
			t.Errorf("%s: attestation port %d, want %d", tc.name, p.Process.AttestationPort, tc.want)
		}
	}
	_, err := PlanContainer(testSpec(map[string]string{contract.AttestationPortAnnotation: "99999"}), cfg)
	if err == nil || !strings.Contains(err.Error(), contract.AttestationPortAnnotation) {
		t.Errorf("a bad port annotation: %v, want an error naming it", err)
	}
	bad := map[string]string{nitropod.CRIContainerType: nitropod.CRIContainerTypeApp, nitropod.CRIContainerName: "app",
		nitropod.EnclavesAnnotation: `{"app":{"cpu":2,"memoryMiB":512,"attestationPort":70000}}`}
	if _, err := PlanContainer(testSpec(bad), cfg); err == nil || !strings.Contains(err.Error(), "70000") {
		t.Errorf("an entry with port 70000: %v, want an error naming it", err)
	}
}
