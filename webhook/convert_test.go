package webhook

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

var update = flag.Bool("update", false, "rewrite the golden *.out.yaml files from the current output")

// golden is the expected result of converting one testdata/golden input.
type golden struct {
	Warnings []string    `json:"warnings,omitempty"`
	Pod      *corev1.Pod `json:"pod"`
}

type goldenCase struct {
	name string
	pod  *corev1.Pod
	cfg  Config
}

func goldenCases(t testing.TB) []goldenCase {
	t.Helper()
	ins, err := filepath.Glob(filepath.Join("testdata", "golden", "*.in.yaml"))
	if err != nil || len(ins) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	var cases []goldenCase
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		c := goldenCase{name: name, pod: readPod(t, in)}
		if b, err := os.ReadFile(filepath.Join("testdata", "golden", name+".config.yaml")); err == nil {
			if err := yaml.UnmarshalStrict(b, &c.cfg); err != nil {
				t.Fatalf("%s config: %v", name, err)
			}
		}
		cases = append(cases, c)
	}
	return cases
}

func readPod(t testing.TB, path string) *corev1.Pod {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(b, &pod); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &pod
}

// podJSON is how pods are compared: resource.Quantity keeps a cached string
// that makes equal values compare unequal as structs.
func podJSON(t testing.TB, p *corev1.Pod) string {
	t.Helper()
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestConvertGolden(t *testing.T) {
	for _, tc := range goldenCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			in := podJSON(t, tc.pod)
			got, warnings, err := Convert(tc.pod, tc.cfg)
			if err != nil {
				t.Fatalf("Convert: %v", err)
			}
			if podJSON(t, tc.pod) != in {
				t.Error("Convert modified its input")
			}
			out, err := yaml.Marshal(golden{Warnings: warnings, Pod: got})
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "golden", tc.name+".out.yaml")
			if *update {
				if err := os.WriteFile(path, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./webhook -run TestConvertGolden -update)", err)
			}
			if diff := cmp.Diff(string(want), string(out)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", path, diff)
			}
		})
	}
}

// TestConvertIdempotent converts every golden output again: nothing may
// change and no warning about rounding may appear, so reinvocationPolicy
// IfNeeded is safe.
func TestConvertIdempotent(t *testing.T) {
	for _, tc := range goldenCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			once, _, err := Convert(tc.pod, tc.cfg)
			if err != nil {
				t.Fatalf("Convert: %v", err)
			}
			// Round-trip through JSON, as the apiserver does between calls.
			var stored corev1.Pod
			if err := json.Unmarshal([]byte(podJSON(t, once)), &stored); err != nil {
				t.Fatal(err)
			}
			twice, _, err := Convert(&stored, tc.cfg)
			if err != nil {
				t.Fatalf("Convert of its own output: %v", err)
			}
			if diff := cmp.Diff(podJSON(t, once), podJSON(t, twice)); diff != "" {
				t.Errorf("second Convert changed the Pod (-once +twice):\n%s", diff)
			}
		})
	}
}

func TestConvertGoldenFacts(t *testing.T) {
	// Independent of the golden files: the facts the issue names.
	pod := readPod(t, filepath.Join("testdata", "golden", "nginx-example.in.yaml"))
	got, warnings, err := Convert(pod, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings = %q, want none", warnings)
	}
	if rc := got.Spec.RuntimeClassName; rc == nil || *rc != nitropod.RuntimeClassName {
		t.Errorf("runtimeClassName = %v", rc)
	}
	c := got.Spec.Containers[0]
	for _, l := range []corev1.ResourceList{c.Resources.Limits, c.Resources.Requests} {
		want := map[corev1.ResourceName]int64{nitropod.ResourceEnclaveCPU: 2, nitropod.ResourceEnclaveMemory: 2048 / nitropod.DefaultMemoryBlockMiB, nitropod.ResourceEnclave: 1}
		gotm := map[corev1.ResourceName]int64{}
		for n, q := range l {
			gotm[n] = q.Value()
		}
		if diff := cmp.Diff(want, gotm); diff != "" {
			t.Errorf("resources (-want +got):\n%s", diff)
		}
	}
	if diff := cmp.Diff([]corev1.VolumeMount{{Name: "anjuna-license", MountPath: nitropod.LicenseDir, ReadOnly: true}}, c.VolumeMounts); diff != "" {
		t.Errorf("volumeMounts (-want +got):\n%s", diff)
	}
	enclaves, err := contract.ParseEnclaves(got.Annotations[nitropod.EnclavesAnnotation])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]contract.Enclave{"nginx-pod": {CPU: 2, MemoryMiB: 2048, Ports: []int32{80}, Debug: true}}, enclaves); diff != "" {
		t.Errorf("enclaves (-want +got):\n%s", diff)
	}
}

func TestConvertUnmanaged(t *testing.T) {
	for _, tc := range []struct {
		name     string
		labels   map[string]string
		warnings []string
	}{
		{"no label", map[string]string{"app": "x"}, nil},
		{"other value", map[string]string{nitropod.ManagedLabel: "true"},
			[]string{`label nitro.k8s.anjuna.io/managed is "true", not "yes": the Pod is not converted and runs outside an enclave`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := basePod()
			pod.Labels = tc.labels
			pod.Spec.Containers[0].Resources.Limits[corev1.ResourceCPU] = resource.MustParse("3") // would be denied if managed
			got, warnings, err := Convert(pod, Config{})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(podJSON(t, pod), podJSON(t, got)); diff != "" {
				t.Errorf("unmanaged Pod changed:\n%s", diff)
			}
			if diff := cmp.Diff(tc.warnings, warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

// basePod is a valid managed Pod that the invalid cases break one way each.
func basePod() *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metaPod,
		ObjectMeta: objectMeta("nginx-pod", map[string]string{nitropod.ManagedLabel: nitropod.ManagedValue}),
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:  "nginx-pod",
				Image: "nginx:latest",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("2"),
					corev1.ResourceMemory: resource.MustParse("2048Mi"),
				}},
				VolumeMounts: []corev1.VolumeMount{{Name: "anjuna-license", MountPath: "/opt/anjuna", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "anjuna-license", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "anjuna-license"}}}},
		},
	}
}

func TestConvertDenied(t *testing.T) {
	q := resource.MustParse
	limits := func(kv ...string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			l := corev1.ResourceList{}
			for i := 0; i < len(kv); i += 2 {
				l[corev1.ResourceName(kv[i])] = q(kv[i+1])
			}
			p.Spec.Containers[0].Resources.Limits = l
		}
	}
	annotate := func(k, v string) func(*corev1.Pod) {
		return func(p *corev1.Pod) { p.Annotations = map[string]string{k: v} }
	}
	for _, tc := range []struct {
		name   string
		modify func(*corev1.Pod)
		cfg    Config
		want   string
	}{
		{"odd cpu", limits("cpu", "3", "memory", "2Gi"), Config{},
			`container nginx-pod: limits.cpu "3" must be an even integer (vCPUs come in hyperthread pairs); use "2" or "4"`},
		{"odd cpu in millis", limits("cpu", "5000m", "memory", "2Gi"), Config{},
			`container nginx-pod: limits.cpu "5" must be an even integer (vCPUs come in hyperthread pairs); use "4" or "6"`},
		{"fractional cpu", limits("cpu", "2500m", "memory", "2Gi"), Config{},
			`container nginx-pod: limits.cpu "2500m" must be an even integer (vCPUs come in hyperthread pairs); use "2" or "4"`},
		{"one cpu", limits("cpu", "1", "memory", "2Gi"), Config{},
			`container nginx-pod: limits.cpu "1" must be at least 2 (one hyperthread pair); use "2"`},
		{"half cpu", limits("cpu", "500m", "memory", "2Gi"), Config{},
			`container nginx-pod: limits.cpu "500m" must be at least 2 (one hyperthread pair); use "2"`},
		{"huge cpu", limits("cpu", "4096", "memory", "2Gi"), Config{},
			`container nginx-pod: limits.cpu "4096" is more than 1024 vCPUs`},
		{"no cpu", limits("memory", "2Gi"), Config{},
			`container nginx-pod: limits.cpu is required (the enclave's vCPUs); set an even integer such as "2"`},
		{"no memory", limits("cpu", "2"), Config{},
			`container nginx-pod: limits.memory is required (the enclave's memory); set at least "64Mi", e.g. "2048Mi"`},
		{"no limits at all", limits(), Config{},
			"container nginx-pod: limits.cpu is required (the enclave's vCPUs); set an even integer such as \"2\"\n" +
				`container nginx-pod: limits.memory is required (the enclave's memory); set at least "64Mi", e.g. "2048Mi"`},
		{"small memory", limits("cpu", "2", "memory", "32Mi"), Config{},
			`container nginx-pod: limits.memory "32Mi" is below the 64 MiB minimum of a Nitro enclave; use at least "64Mi"`},
		{"huge memory", limits("cpu", "2", "memory", "1Ei"), Config{},
			`container nginx-pod: limits.memory "1Ei" is more than 64 TiB`},
		{"cpu request above limit", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: q("4")}
		}, Config{}, `container nginx-pod: requests.cpu "4" exceeds limits.cpu "2"; lower the request or remove it`},
		{"memory request above default", func(p *corev1.Pod) {
			delete(p.Spec.Containers[0].Resources.Limits, corev1.ResourceMemory)
			p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: q("3Gi")}
		}, Config{DefaultMemory: ptr(q("1Gi"))}, `container nginx-pod: requests.memory "3Gi" exceeds limits.memory "1Gi"; lower the request or remove it`},
		{"other runtime class", func(p *corev1.Pod) { p.Spec.RuntimeClassName = ptr("runc") }, Config{},
			`runtimeClassName "runc": a managed Pod runs with RuntimeClass "nitro"; remove runtimeClassName or set it to "nitro"`},
		{"other runtime class configured", func(p *corev1.Pod) { p.Spec.RuntimeClassName = ptr("nitro") }, Config{RuntimeClassName: "enclave"},
			`runtimeClassName "nitro": a managed Pod runs with RuntimeClass "enclave"; remove runtimeClassName or set it to "enclave"`},
		{"no licence volume", func(p *corev1.Pod) { p.Spec.Volumes = nil; p.Spec.Containers[0].VolumeMounts = nil }, Config{},
			"the Pod has no volume for the licence Secret \"anjuna-license\"; create it with `kubectl create secret generic anjuna-license --from-file=license.yaml=anjuna-license.yaml` and add the volume {name: anjuna-license, secret: {secretName: anjuna-license}} to the Pod"},
		{"licence volume from another secret", func(p *corev1.Pod) { p.Spec.Volumes[0].Secret.SecretName = "license" }, Config{},
			"the Pod has no volume for the licence Secret \"anjuna-license\"; create it with `kubectl create secret generic anjuna-license --from-file=license.yaml=anjuna-license.yaml` and add the volume {name: anjuna-license, secret: {secretName: anjuna-license}} to the Pod"},
		{"licence path taken", func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "data", MountPath: nitropod.LicenseDir})
		}, Config{}, `container nginx-pod: volumeMount data at /run/nitropod/license is at or under /run/nitropod/license, where the licence is mounted; choose another mountPath`},
		{"licence path taken, spelled differently", func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "data", MountPath: "/run//nitropod/./license/"})
		}, Config{}, `container nginx-pod: volumeMount data at /run//nitropod/./license/ is at or under /run/nitropod/license, where the licence is mounted; choose another mountPath`},
		{"mount under the licence directory", func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "data", MountPath: "/run/nitropod/license/license.yaml"})
		}, Config{}, `container nginx-pod: volumeMount data at /run/nitropod/license/license.yaml is at or under /run/nitropod/license, where the licence is mounted; choose another mountPath`},
		{"device plugin env set by the Pod", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: nitropod.EnvCPUIDs, Value: "0-7"})
		}, Config{}, `container nginx-pod: env NITROPOD_CPU_IDS is reserved for nitropod (NITROPOD_* variables carry the enclave allocation); rename it`},
		{"device plugin env in an init container", func(p *corev1.Pod) {
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "init", Image: "busybox", Env: []corev1.EnvVar{{Name: nitropod.EnvMemoryMiB, Value: "99999"}}})
		}, Config{}, `init container init: env NITROPOD_MEMORY_MIB is reserved for nitropod (NITROPOD_* variables carry the enclave allocation); rename it`},
		{"envFrom with the reserved prefix", func(p *corev1.Pod) {
			p.Spec.Containers[0].EnvFrom = append(p.Spec.Containers[0].EnvFrom, corev1.EnvFromSource{Prefix: "NITROPOD_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "x"}}})
		}, Config{}, `container nginx-pod: envFrom prefix "NITROPOD_" is reserved for nitropod (NITROPOD_* variables carry the enclave allocation); choose another prefix`},
		{"nitropod annotation the Pod may not write", annotate("nitropod.io/allocation", `{"cpus":"0-7"}`), Config{},
			`annotation nitropod.io/allocation is reserved for nitropod; remove it (a Pod may set only nitropod.io/attestation-port, nitropod.io/egress-allow, nitropod.io/expected-pcr0, nitropod.io/expected-pcr8)`},
		{"attestation port not a port", annotate(contract.AttestationPortAnnotation, "http"), Config{},
			`annotation nitropod.io/attestation-port is "http": give a TCP port (1-65535) for the enclave's attestation API, or "off" for none (unset: 9910)`},
		{"containerPort on the attestation API's default port", func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9910}}
		}, Config{}, `container nginx-pod: containerPort 9910 is the enclave's attestation API port; set the annotation nitropod.io/attestation-port to another port (or "off"), or use another containerPort`},
		{"image location not s3", annotate(nitropod.ImageLocationAnnotation, "https://example.com/x.eif"), Config{},
			`annotation nitro.k8s.anjuna.io/imageLocation: image location "https://example.com/x.eif" is not an S3 URL: write it as s3://BUCKET/KEY`},
		{"image location bad bucket", annotate(nitropod.ImageLocationAnnotation, "s3://My_Bucket/x.eif"), Config{},
			`annotation nitro.k8s.anjuna.io/imageLocation: image location "s3://My_Bucket/x.eif": bucket "My_Bucket" is not a valid S3 bucket name (3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit)`},
		{"image location ip bucket", annotate(nitropod.ImageLocationAnnotation, "s3://192.168.1.1/x.eif"), Config{},
			`annotation nitro.k8s.anjuna.io/imageLocation: image location "s3://192.168.1.1/x.eif": bucket "192.168.1.1" is not a valid S3 bucket name (formatted as an IP address)`},
		{"egress allowlist with a host name", annotate(nitropod.EgressAllowAnnotation, "example.com:443"), Config{},
			`annotation nitropod.io/egress-allow: egress allowlist entry "example.com:443": not an IP address (host names are not accepted) (write an IPv4 address or CIDR, optionally with :port, e.g. 10.96.0.10:53 or 10.0.0.0/8)`},
		{"image location no key", annotate(nitropod.ImageLocationAnnotation, "s3://your-eif-bucket/"), Config{},
			`annotation nitro.k8s.anjuna.io/imageLocation: image location "s3://your-eif-bucket/" has no object key: write it as s3://your-eif-bucket/path/to/image.eif`},
		{"image location two containers", func(p *corev1.Pod) {
			p.Annotations = map[string]string{nitropod.ImageLocationAnnotation: "s3://b-1/k"}
			c := p.Spec.Containers[0].DeepCopy()
			c.Name = "second"
			p.Spec.Containers = append(p.Spec.Containers, *c)
		}, Config{}, `annotation nitro.k8s.anjuna.io/imageLocation names one EIF but the Pod has 2 containers; use one container, or remove the annotation to build an EIF per container`},
		{"launcher cpu not a quantity", annotate(nitropod.LauncherCPUAnnotation, "lots"), Config{},
			`annotation nitro.k8s.anjuna.io/launcherCPU "lots" is not a Kubernetes quantity; use e.g. "750m" or "1", or remove it for no limit`},
		{"launcher memory not a quantity", annotate(nitropod.LauncherMemoryAnnotation, "4GB"), Config{},
			`annotation nitro.k8s.anjuna.io/launcherMemory "4GB" is not a Kubernetes quantity; use e.g. "512Mi" or "4Gi", or remove it for no limit`},
		{"launcher memory negative", annotate(nitropod.LauncherMemoryAnnotation, "-1Gi"), Config{},
			`annotation nitro.k8s.anjuna.io/launcherMemory "-1Gi" must be greater than zero; use e.g. "512Mi" or "4Gi", or remove it for no limit`},
		{"host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, Config{},
			`hostNetwork: an enclave has its own kernel and cannot share the node's namespaces; remove hostNetwork (ports the Pod declares are forwarded into the enclave)`},
		{"host pid and ipc", func(p *corev1.Pod) { p.Spec.HostPID = true; p.Spec.HostIPC = true }, Config{},
			"hostPID: an enclave has its own kernel and cannot share the node's namespaces; remove hostPID (ports the Pod declares are forwarded into the enclave)\n" +
				`hostIPC: an enclave has its own kernel and cannot share the node's namespaces; remove hostIPC (ports the Pod declares are forwarded into the enclave)`},
		{"privileged", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr(true)}
		}, Config{}, `container nginx-pod: privileged cannot apply inside an enclave (it has no host devices and its own kernel); remove securityContext.privileged, or add the capabilities the app needs`},
		{"too many containers", func(p *corev1.Pod) {
			for i := range 4 {
				c := p.Spec.Containers[0].DeepCopy()
				c.Name = "c" + string(rune('0'+i))
				p.Spec.Containers = append(p.Spec.Containers, *c)
			}
		}, Config{}, `the Pod has 5 containers but a node runs at most 4 enclaves; use at most 4 containers (init containers do not count)`},
		{"native form odd cpu", limits(nitropod.ResourceEnclaveCPU, "3", nitropod.ResourceEnclaveMemory, "32"), Config{},
			`container nginx-pod: limits[nitropod.io/enclave-cpu] "3" must be an even integer (vCPUs come in hyperthread pairs); use "2" or "4"`},
		{"native form without memory", limits(nitropod.ResourceEnclaveCPU, "2"), Config{},
			`container nginx-pod: limits[nitropod.io/enclave-cpu] is set but limits[nitropod.io/enclave-memory] is not; set both, or give limits.cpu and limits.memory instead`},
		{"native form too little memory", limits(nitropod.ResourceEnclaveCPU, "2", nitropod.ResourceEnclaveMemory, "1"), Config{MemoryBlockMiB: 16},
			`container nginx-pod: limits[nitropod.io/enclave-memory] "1" is 16 MiB, below the 64 MiB minimum of a Nitro enclave`},
		{"several violations in several containers", func(p *corev1.Pod) {
			c := p.Spec.Containers[0].DeepCopy()
			c.Name = "sidecar"
			c.Resources.Limits[corev1.ResourceMemory] = q("1Mi")
			p.Spec.Containers[0].Resources.Limits[corev1.ResourceCPU] = q("7")
			p.Spec.Containers = append(p.Spec.Containers, *c)
			p.Spec.RuntimeClassName = ptr("kata")
		}, Config{}, `runtimeClassName "kata": a managed Pod runs with RuntimeClass "nitro"; remove runtimeClassName or set it to "nitro"` + "\n" +
			`container nginx-pod: limits.cpu "7" must be an even integer (vCPUs come in hyperthread pairs); use "6" or "8"` + "\n" +
			`container sidecar: limits.memory "1Mi" is below the 64 MiB minimum of a Nitro enclave; use at least "64Mi"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := basePod()
			tc.modify(pod)
			got, _, err := Convert(pod, tc.cfg)
			if err == nil {
				t.Fatalf("Convert admitted the Pod:\n%s", podJSON(t, got))
			}
			if !IsDenied(err) {
				t.Fatalf("error %v is not a denial", err)
			}
			if diff := cmp.Diff(tc.want, err.Error()); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConvertLicenseOptional(t *testing.T) {
	pod := basePod()
	pod.Spec.Volumes, pod.Spec.Containers[0].VolumeMounts = nil, nil
	got, _, err := Convert(pod, Config{LicenseOptional: true})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.Spec.Containers[0].VolumeMounts); n != 0 {
		t.Errorf("%d volumeMounts added without a licence volume", n)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, ""},
		{Config{DefaultCPU: ptr(resource.MustParse("3"))}, `default cpu "3" must be an even integer (vCPUs come in hyperthread pairs); use "2" or "4"`},
		{Config{DefaultMemory: ptr(resource.MustParse("1Mi"))}, `default memory "1Mi" is below the 64 MiB minimum of a Nitro enclave; use at least "64Mi"`},
	} {
		got := ""
		if err := tc.cfg.Validate(); err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("Validate() = %q, want %q", got, tc.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestConvertPortsAndDebug(t *testing.T) {
	pod := basePod()
	c := &pod.Spec.Containers[0]
	c.Ports = []corev1.ContainerPort{
		{ContainerPort: 443}, {ContainerPort: 53, Protocol: corev1.ProtocolUDP},
		{ContainerPort: 443, Protocol: corev1.ProtocolTCP, HostPort: 8443}, {ContainerPort: 80, Protocol: corev1.ProtocolSCTP},
		{ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
	}
	c.Env = []corev1.EnvVar{
		{Name: nitropod.DebugModeEnv, Value: "no"},
		{Name: nitropod.DebugModeEnv, ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{Key: "debug"}}},
	}
	got, warnings, err := Convert(pod, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"nginx-pod":{"cpu":2,"memoryMiB":2048,"ports":[443,8080],"udpPorts":[53]}}`; got.Annotations[nitropod.EnclavesAnnotation] != want {
		t.Errorf("enclaves = %s, want %s", got.Annotations[nitropod.EnclavesAnnotation], want)
	}
	want := []string{"container nginx-pod: ANJ_ENCLAVE_DEBUG_MODE comes from valueFrom, which admission cannot see; the enclave is recorded as production mode"}
	if diff := cmp.Diff(want, warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}

// TestConvertOverwritesForgedEnclaves: an enclaves annotation the Pod brings
// is replaced by the one computed from its limits, never believed.
func TestConvertOverwritesForgedEnclaves(t *testing.T) {
	pod := basePod()
	pod.Annotations = map[string]string{nitropod.EnclavesAnnotation: `{"nginx-pod":{"cpu":64,"memoryMiB":262144,"debug":true}}`}
	got, _, err := Convert(pod, Config{})
	if err != nil {
		t.Fatal(err)
	}
	want, _, err := Convert(basePod(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	if g, w := got.Annotations[nitropod.EnclavesAnnotation], want.Annotations[nitropod.EnclavesAnnotation]; g != w {
		t.Errorf("enclaves annotation = %s, want %s (the forged value must be replaced)", g, w)
	}
}
