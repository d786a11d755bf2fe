package contract

import (
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
)

// What is measured and what is delivered (README "Measured and delivered").
//
// The webhook sees the Pod's container spec; the shim sees only the OCI
// spec containerd wrote, where the env the Pod author wrote literally, the
// env kubelet injected (service links, the device plugin's) and the env
// taken from Secrets and ConfigMaps are one flat list. The webhook records
// the sources in the nitropod.io/delivery annotation; the shim splits the
// OCI env with SplitEnv, measures one part into the EIF and delivers the
// other at start, and records DeliveryPolicy in the EIF so that init refuses
// anything else the host offers.

// Limits on the nitropod.io/delivery annotation and on what is delivered.
const (
	// MaxDeliveryAnnotationBytes bounds the annotation's length.
	MaxDeliveryAnnotationBytes = 64 << 10
	// MaxDeliveryNames bounds the env names, prefixes and mounts of one
	// container's entry.
	MaxDeliveryNames = 1024
	// MaxEnvNameBytes bounds one env name or prefix.
	MaxEnvNameBytes = 256
	// MaxMountPathBytes bounds one mount path.
	MaxMountPathBytes = 1024
	// DefaultMaxDeliveredBytes is the default cap on everything delivered
	// to one container (env values, hostname and volume contents).
	DefaultMaxDeliveredBytes = 16 << 20
	// HardMaxDeliveredBytes is the largest cap a node may configure and
	// what init accepts at most, whatever the node says.
	HardMaxDeliveredBytes = 256 << 20
	// MaxDeliveredFiles bounds the number of files delivered to one container.
	MaxDeliveredFiles = 4096
)

// Volume kinds that can be delivered into an enclave.
const (
	VolumeSecret      = "secret"
	VolumeConfigMap   = "configMap"
	VolumeDownwardAPI = "downwardAPI"
	VolumeProjected   = "projected"
	VolumeEmptyDir    = "emptyDir"
)

// KubeletVolumeDir maps a deliverable volume kind to the directory name
// kubelet keeps such volumes under (…/pods/UID/volumes/kubernetes.io~NAME/).
var KubeletVolumeDir = map[string]string{
	VolumeSecret:      "kubernetes.io~secret",
	VolumeConfigMap:   "kubernetes.io~configmap",
	VolumeDownwardAPI: "kubernetes.io~downward-api",
	VolumeProjected:   "kubernetes.io~projected",
	VolumeEmptyDir:    "kubernetes.io~empty-dir",
}

// SandboxFiles are the files kubelet and containerd bind-mount into every
// container from the Pod sandbox; they are always deliverable.
var SandboxFiles = []string{"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"}

// ServiceLinkGlobs match the env kubelet injects for the Services of the
// namespace (FOO_SERVICE_HOST, FOO_PORT_80_TCP_ADDR, …). A name written in
// the Pod spec that matches one is still measured: literal names win.
var ServiceLinkGlobs = []string{"*_SERVICE_HOST", "*_SERVICE_PORT", "*_SERVICE_PORT_*", "*_PORT", "*_PORT_*"}

// RuntimeEnv are env names the node sets per container that are delivered:
// HOSTNAME (containerd) and the device plugin's allocation.
var RuntimeEnv = []string{"HOSTNAME", "NITROPOD_CPU_IDS", "NITROPOD_MEMORY_MIB", "NITROPOD_ENCLAVE_SLOT"}

// NeverDelivered match env names that change how any program is loaded
// (the dynamic loader's LD_* variables): init refuses them from the host
// even under a policy that allows every name (an envFrom without prefix).
// Written in the Pod spec literally they are measured like any other.
var NeverDelivered = []string{"LD_*"}

// ContainerDelivery is one container's entry of the nitropod.io/delivery
// annotation: where its env comes from and which volumes it mounts.
type ContainerDelivery struct {
	// Literal are env names whose value the Pod spec writes literally
	// (value:, without $(VAR) references): measured.
	Literal []string `json:"literal,omitempty"`
	// Env are env names taken from valueFrom (Secrets, ConfigMaps, fieldRef,
	// resourceFieldRef) or whose value refers to other variables: delivered.
	Env []string `json:"env,omitempty"`
	// EnvFrom are the prefixes of the container's envFrom sources; "" means
	// a source without a prefix, which may deliver any name.
	EnvFrom []string `json:"envFrom,omitempty"`
	// Mounts are the container's volume mounts that are delivered.
	Mounts []Mount `json:"mounts,omitempty"`
}

// Mount is one delivered volume mount.
type Mount struct {
	// Path is the container's mountPath (absolute, clean).
	Path string `json:"path"`
	// Kind is one of the Volume* kinds.
	Kind string `json:"kind"`
	// Volume is the volume's name (for messages).
	Volume string `json:"volume"`
	// SubPath is set when the mount uses subPath (one file or directory,
	// never updated, as kubelet does).
	SubPath bool `json:"subPath,omitempty"`
	// ReadOnly is the mount's readOnly (secret, configMap, downwardAPI and
	// projected volumes are always read-only, as kubelet mounts them).
	ReadOnly bool `json:"readOnly,omitempty"`
	// SizeLimit is an emptyDir's sizeLimit in bytes (0: none).
	SizeLimit int64 `json:"sizeLimit,omitempty"`
}

// ParseDelivery decodes and validates the nitropod.io/delivery annotation.
func ParseDelivery(s string) (map[string]ContainerDelivery, error) {
	if len(s) > MaxDeliveryAnnotationBytes {
		return nil, fmt.Errorf("delivery annotation is %d bytes, more than the %d allowed", len(s), MaxDeliveryAnnotationBytes)
	}
	var m map[string]ContainerDelivery
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("decoding delivery annotation %s: %w", Clip(s), err)
	}
	if len(m) > MaxEnclavesPerPod {
		return nil, fmt.Errorf("delivery annotation names %d containers, more than the %d allowed", len(m), MaxEnclavesPerPod)
	}
	for _, name := range slices.Sorted(maps.Keys(m)) {
		if err := m[name].Validate(); err != nil {
			return nil, fmt.Errorf("delivery of container %q: %w", name, err)
		}
	}
	return m, nil
}

// MarshalDelivery encodes m as the annotation's value (deterministic).
func MarshalDelivery(m map[string]ContainerDelivery) string {
	b, _ := json.Marshal(m) // plain strings and ints cannot fail
	return string(b)
}

// Validate bounds and checks every name and path of d.
func (d ContainerDelivery) Validate() error {
	if n := len(d.Literal) + len(d.Env) + len(d.EnvFrom) + len(d.Mounts); n > MaxDeliveryNames {
		return fmt.Errorf("%d env names, prefixes and mounts, more than the %d allowed", n, MaxDeliveryNames)
	}
	for _, n := range slices.Concat(d.Literal, d.Env) {
		if err := checkEnvName(n); err != nil {
			return err
		}
	}
	for _, p := range d.EnvFrom {
		if p != "" {
			if err := checkEnvName(p); err != nil {
				return fmt.Errorf("envFrom prefix: %w", err)
			}
		}
	}
	for _, m := range d.Mounts {
		if err := CheckMountPath(m.Path); err != nil {
			return fmt.Errorf("volume %s: %w", Clip(m.Volume), err)
		}
		if _, ok := KubeletVolumeDir[m.Kind]; !ok {
			return fmt.Errorf("volume %s: kind %s cannot be delivered into an enclave", Clip(m.Volume), Clip(m.Kind))
		}
		if m.SizeLimit < 0 {
			return fmt.Errorf("volume %s: negative sizeLimit %d", Clip(m.Volume), m.SizeLimit)
		}
	}
	return nil
}

func checkEnvName(n string) error {
	if n == "" || len(n) > MaxEnvNameBytes || strings.ContainsAny(n, "=\x00") {
		return fmt.Errorf("env name %s is empty, longer than %d bytes or contains = or NUL", Clip(n), MaxEnvNameBytes)
	}
	return nil
}

// CheckMountPath accepts an absolute, clean path of at most
// MaxMountPathBytes without NUL that is not "/".
func CheckMountPath(p string) error {
	if len(p) > MaxMountPathBytes || !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" || strings.ContainsRune(p, 0) {
		return fmt.Errorf("mount path %s must be an absolute, clean path other than / of at most %d bytes", Clip(p), MaxMountPathBytes)
	}
	return nil
}

// Literal reports whether an env value written in a Pod spec is measured
// as is: kubelet expands $(NAME) references with other variables' values
// (which may come from Secrets), so a value with a reference is delivered.
func Literal(value string) bool { return !strings.Contains(value, "$(") }

// SplitEnv splits a container's OCI env (K=V, at most one entry per name,
// as the shim dedups it) into what is measured and what is delivered, by
// the sources d records. A name is measured when the Pod spec writes it
// literally; it is delivered when it comes from valueFrom, from an envFrom
// source whose prefix it has, from kubelet's service links, or is one of
// RuntimeEnv; every other name (the image's env) is measured. An envFrom
// source without a prefix makes every name that is not literal delivered
// (README: give envFrom a prefix to keep the image's env measured).
func SplitEnv(env []string, d ContainerDelivery) (measured, delivered []string) {
	literal := setOf(d.Literal)
	from := setOf(d.Env)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case literal[k]:
			measured = append(measured, kv)
		case from[k] || slices.Contains(RuntimeEnv, k) || matchAny(ServiceLinkGlobs, k) || hasPrefixAny(d.EnvFrom, k):
			delivered = append(delivered, kv)
		default:
			measured = append(measured, kv)
		}
	}
	return measured, delivered
}

// DeliveryPolicy is what an EIF allows the host to deliver at start; it is
// measured (ramdisk.Process.Delivery) and init enforces it.
type DeliveryPolicy struct {
	// Env are name patterns (* matches any run of characters) that may be
	// delivered. A delivered name never replaces a measured one.
	Env []string `json:"env,omitempty"`
	// Mounts are the paths at which files or volumes may be delivered.
	Mounts []string `json:"mounts,omitempty"`
	// Any allows everything (debug enclaves, whose PCRs are zero anyway).
	Any bool `json:"any,omitempty"`
}

// PolicyFor is the policy of a container with delivery sources d: its
// valueFrom names, its envFrom prefixes, service links, RuntimeEnv, its
// delivered mounts and SandboxFiles. It depends only on the Pod template.
func PolicyFor(d ContainerDelivery) DeliveryPolicy {
	var p DeliveryPolicy
	p.Env = slices.Concat(RuntimeEnv, ServiceLinkGlobs, d.Env)
	for _, pre := range d.EnvFrom {
		p.Env = append(p.Env, globEscape(pre)+"*")
	}
	p.Env = slices.Compact(slices.Sorted(slices.Values(p.Env)))
	p.Mounts = slices.Clone(SandboxFiles)
	for _, m := range d.Mounts {
		p.Mounts = append(p.Mounts, m.Path)
	}
	p.Mounts = slices.Compact(slices.Sorted(slices.Values(p.Mounts)))
	return p
}

// DefaultPolicy applies to an EIF that records no policy (one built before
// delivery existed, or by hand): only RuntimeEnv, service links and
// SandboxFiles.
func DefaultPolicy() DeliveryPolicy { return PolicyFor(ContainerDelivery{}) }

// CheckEnv reports why name may not be delivered, or nil. measured holds
// the names in the EIF's own env.
func (p DeliveryPolicy) CheckEnv(name string, measured map[string]bool) error {
	if err := checkEnvName(name); err != nil {
		return err
	}
	if p.Any {
		return nil
	}
	if measured[name] {
		return fmt.Errorf("env %s is measured into the enclave image and cannot be replaced at start", Clip(name))
	}
	if matchAny(NeverDelivered, name) {
		return fmt.Errorf("env %s changes how programs are loaded and is never delivered at start (write it in the Pod spec with value: to have it measured); refusing to start", Clip(name))
	}
	if !matchAny(p.Env, name) {
		return fmt.Errorf("env %s is not among the names the enclave image allows to be delivered (its Pod spec's valueFrom and envFrom, service links, %s); refusing to start",
			Clip(name), strings.Join(RuntimeEnv, ", "))
	}
	return nil
}

// CheckMount reports why files may not be delivered at path p, or nil.
func (p DeliveryPolicy) CheckMount(path string) error {
	if err := CheckMountPath(path); err != nil {
		return err
	}
	if p.Any || slices.Contains(p.Mounts, path) {
		return nil
	}
	return fmt.Errorf("mount %s is not among the paths the enclave image allows to be delivered; refusing to start", Clip(path))
}

func setOf(ss []string) map[string]bool {
	m := make(map[string]bool, len(ss))
	for _, s := range ss {
		m[s] = true
	}
	return m
}

func hasPrefixAny(prefixes []string, s string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func matchAny(globs []string, s string) bool {
	for _, g := range globs {
		if Glob(g, s) {
			return true
		}
	}
	return false
}

// Glob reports whether s matches pattern, where * matches any run of
// characters and \* a literal star. Written here (not path.Match) because
// env names may hold any character but = and NUL.
func Glob(pattern, s string) bool {
	// Split on unescaped stars into literal segments.
	var segs []string
	var cur strings.Builder
	for i := 0; i < len(pattern); i++ {
		switch {
		case pattern[i] == '\\' && i+1 < len(pattern):
			i++
			cur.WriteByte(pattern[i])
		case pattern[i] == '*':
			segs = append(segs, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(pattern[i])
		}
	}
	segs = append(segs, cur.String())
	if len(segs) == 1 {
		return s == segs[0]
	}
	if !strings.HasPrefix(s, segs[0]) {
		return false
	}
	s = s[len(segs[0]):]
	last := segs[len(segs)-1]
	for _, seg := range segs[1 : len(segs)-1] {
		i := strings.Index(s, seg)
		if i < 0 {
			return false
		}
		s = s[i+len(seg):]
	}
	return len(s) >= len(last) && strings.HasSuffix(s, last)
}

func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`).Replace(s)
}
