package shim

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave/initproc/secctx"
	"github.com/nitropod/nitropod/shim/deliver"
)

// Plan is what the shim decided about one container from its OCI spec and
// the shim config: whether it runs in an enclave and, if so, how.
type Plan struct {
	// Enclave is false for the pause container and for app containers the
	// webhook left out of nitropod.io/enclaves; those run through runc.
	Enclave bool
	// CPUs, CPUIDs, MemoryMiB size the enclave: the config defaults until
	// ApplyAllocation replaces them by what the device plugin allocated.
	// Nothing the Pod's author writes (env, annotations) sizes an enclave.
	CPUs      int
	CPUIDs    []int
	MemoryMiB int
	// Allocated is set by ApplyAllocation.
	Allocated bool
	// Pod names the container as kubelet knows it, when containerd's CRI
	// created it (empty for direct use such as ctr run).
	Pod PodRef
	// Debug is ANJ_ENCLAVE_DEBUG_MODE=yes in the process env.
	Debug bool
	// Ports are the TCP ports the launcher listens on in the Pod's network
	// namespace and forwards into the enclave.
	Ports []uint16
	// UDPPorts are the declared UDP ports the launcher publishes.
	UDPPorts []uint16
	// PortsFromImage is set when the webhook recorded no ports for the
	// container: the image's EXPOSEd TCP ports are forwarded instead.
	PortsFromImage bool
	// ImageLocation is the s3:// URL of a prebuilt EIF, or "".
	ImageLocation string
	// Process is what runs inside the enclave (measured into the EIF).
	Process ramdisk.Process
	// Deliver is what the launcher delivers at start, not measured: the
	// hostname, the env names SplitEnv puts on the delivered side, and the
	// sandbox files and volumes (shim/deliver).
	Deliver deliver.Plan
	// allocationEnv holds the NITROPOD_* values of the container env, which
	// the device plugin sets and a Pod author could override; they are only
	// compared with the authoritative allocation.
	allocationEnv map[string]string
}

// PodRef names a CRI container: its Pod's namespace and name and its own
// name, from the annotations containerd's CRI sets (from kubelet's sandbox
// metadata, not from the Pod's annotations).
type PodRef struct {
	Namespace, Name, Container string
}

// IsSet reports whether the container came through CRI.
func (r PodRef) IsSet() bool { return r.Namespace != "" && r.Name != "" && r.Container != "" }

func (r PodRef) String() string { return r.Namespace + "/" + r.Name + " container " + r.Container }

// runtimeEnv names are set per allocation by the device plugin; they are
// not part of the measured process (they would make every allocation a new
// EIF) and never size the enclave.
var runtimeEnv = map[string]bool{
	nitropod.EnvCPUIDs:      true,
	nitropod.EnvMemoryMiB:   true,
	nitropod.EnvEnclaveSlot: true,
}

// PlanContainer decides how to run the container described by spec.
func PlanContainer(spec *specs.Spec, cfg Config) (Plan, error) {
	ann := spec.Annotations
	switch ann[nitropod.CRIContainerType] {
	case nitropod.CRIContainerTypePod:
		return Plan{}, nil
	}
	var entry *contract.Enclave
	var sources contract.ContainerDelivery
	if ann[nitropod.CRIContainerType] == nitropod.CRIContainerTypeApp {
		if raw, ok := ann[nitropod.EnclavesAnnotation]; ok {
			all, err := contract.ParseEnclaves(raw)
			if err != nil {
				return Plan{}, fmt.Errorf("annotation %s: %w (it is written by the nitropod webhook; re-create the Pod)", nitropod.EnclavesAnnotation, err)
			}
			e, ok := all[ann[nitropod.CRIContainerName]]
			if !ok {
				return Plan{}, nil // the webhook left this container out of the enclave
			}
			entry = &e
		}
		if raw, ok := ann[nitropod.DeliveryAnnotation]; ok {
			all, err := contract.ParseDelivery(raw)
			if err != nil {
				return Plan{}, fmt.Errorf("annotation %s: %w (it is written by the nitropod webhook; re-create the Pod)", nitropod.DeliveryAnnotation, err)
			}
			sources = all[ann[nitropod.CRIContainerName]]
		}
	}
	if spec.Process == nil || len(spec.Process.Args) == 0 {
		return Plan{}, fmt.Errorf("container spec has no process args: an enclave container needs a command")
	}
	p := Plan{Enclave: true, CPUs: cfg.DefaultCPUs, MemoryMiB: cfg.DefaultMemoryMiB, ImageLocation: ann[nitropod.ImageLocationAnnotation]}
	if ann[nitropod.CRIContainerType] == nitropod.CRIContainerTypeApp {
		p.Pod = PodRef{Namespace: ann[nitropod.CRISandboxNamespace], Name: ann[nitropod.CRISandboxName], Container: ann[nitropod.CRIContainerName]}
	}
	if entry != nil {
		for _, port := range entry.Ports {
			p.Ports = append(p.Ports, uint16(port)) // 1..65535, checked by ParseEnclaves
		}
		for _, port := range entry.UDPPorts {
			p.UDPPorts = append(p.UDPPorts, uint16(port))
		}
		p.UDPPorts = uniquePorts(p.UDPPorts)
		p.Debug = entry.Debug
	}
	env := map[string]string{}
	proc := ramdisk.Process{
		Args: append([]string(nil), spec.Process.Args...),
		Cwd:  spec.Process.Cwd,
		UID:  spec.Process.User.UID,
		GID:  spec.Process.User.GID,
	}
	// The hostname names the Pod (a replica): delivered, not measured.
	// containerd's CRI sets it only in the sandbox's spec (containers share
	// its UTS namespace) and gives it to containers as HOSTNAME.
	p.Deliver.Hostname = spec.Hostname
	p.Deliver.MaxBytes = cfg.MaxDeliveredBytes
	if raw, ok := ann[nitropod.EgressAllowAnnotation]; ok {
		rules, err := contract.ParseEgressAllow(raw)
		if err != nil {
			return Plan{}, fmt.Errorf("annotation %s: %w", nitropod.EgressAllowAnnotation, err)
		}
		allow := rules.Strings()
		proc.EgressAllow = &allow
	}
	for _, g := range spec.Process.User.AdditionalGids {
		if g != proc.GID {
			proc.AdditionalGIDs = append(proc.AdditionalGIDs, g)
		}
	}
	for _, kv := range spec.Process.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	// The measured env must not depend on the order kubelet happens to
	// emit it in (service and device-plugin variables come from maps): one
	// entry per name, the last value winning as in containerd's WithEnv,
	// sorted by name. SplitEnv (the rule the webhook's annotation feeds)
	// keeps what the Pod spec writes literally and the image's env on the
	// measured side and puts the rest on the delivered side.
	var sorted []string
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if runtimeEnv[k] {
			if p.allocationEnv == nil {
				p.allocationEnv = map[string]string{}
			}
			p.allocationEnv[k] = env[k]
		}
		sorted = append(sorted, k+"="+env[k])
	}
	if p.Deliver.Hostname == "" && p.Pod.IsSet() {
		p.Deliver.Hostname = env["HOSTNAME"]
	}
	measured, delivered := contract.SplitEnv(sorted, sources)
	proc.Env = measured
	for _, kv := range delivered {
		k, _, _ := strings.Cut(kv, "=")
		p.Deliver.Env = append(p.Deliver.Env, k)
	}
	mounts, err := deliver.PlanMounts(spec, sources, ann[nitropod.CRISandboxUID])
	if err != nil {
		return Plan{}, err
	}
	p.Deliver.Mounts = mounts
	if env[nitropod.DebugModeEnv] == nitropod.DebugModeValue {
		p.Debug = true
	}
	port, err := attestationPort(ann, entry)
	if err != nil {
		return Plan{}, err
	}
	proc.AttestationPort = port
	p.PortsFromImage = entry == nil || entry.Ports == nil
	p.Ports = uniquePorts(p.Ports)
	proc.Ports = p.Ports
	policy := contract.PolicyFor(sources)
	if p.Debug {
		policy = contract.DeliveryPolicy{Any: true}
	}
	proc.Delivery = &policy
	proc.Security = securityOf(spec)
	if err := secctx.Check(proc.Security); err != nil {
		return Plan{}, fmt.Errorf("the container's security context cannot be applied inside the enclave: %w", err)
	}
	switch {
	case p.Debug:
		proc.Exec = &contract.ExecPolicy{Any: true}
	case entry != nil && len(entry.Exec) > 0:
		proc.Exec = &contract.ExecPolicy{Commands: entry.Exec}
	}
	p.Process = proc
	return p, nil
}

// ExecFromAnnotation gives a production container that did not come
// through Kubernetes (ctr run --annotation) the commands listed for id in
// its nitropod.io/exec-commands annotation. A CRI container's list is the
// webhook's (in nitropod.io/enclaves), which also holds the Pod's probes
// and hooks; the Pod's own annotation is not read for it.
func (p *Plan) ExecFromAnnotation(spec *specs.Spec, id string) error {
	raw, ok := spec.Annotations[contract.ExecCommandsAnnotation]
	if !ok || p.Debug || spec.Annotations[nitropod.CRIContainerType] != "" {
		return nil
	}
	all, err := contract.ParseExecCommands(raw)
	if err != nil {
		return err
	}
	if cmds := all[id]; len(cmds) > 0 {
		p.Process.Exec = &contract.ExecPolicy{Commands: cmds}
	}
	return nil
}

// InheritSandboxSysctls adds the Pod's sysctls to the enclave's process.
// Kubernetes sets sysctls per Pod, and containerd's CRI writes them only
// into the sandbox (pause) container's spec, where runc applies them to
// the Pod's namespaces; an enclave has its own kernel, so init applies
// them there. The sandbox spec is the sibling bundle named by the
// sandbox-id annotation (containerd's, not the Pod's); the container's
// own sysctls win.
func (p *Plan) InheritSandboxSysctls(spec *specs.Spec, bundle string) error {
	sb := spec.Annotations[nitropod.CRISandboxID]
	if sb == "" || p.Pod == (PodRef{}) {
		return nil
	}
	if strings.ContainsAny(sb, "/\x00") || sb == "." || sb == ".." {
		return fmt.Errorf("annotation %s %q is not a container id", nitropod.CRISandboxID, sb)
	}
	sbSpec, err := readBundleSpec(filepath.Join(filepath.Dir(bundle), sb))
	if errors.Is(err, os.ErrNotExist) {
		return nil // no sandbox task here (the Pod's sandbox is not a container of this runtime)
	}
	if err != nil {
		return fmt.Errorf("reading the Pod sandbox's spec for its sysctls: %w", err)
	}
	if sbSpec.Linux == nil || len(sbSpec.Linux.Sysctl) == 0 {
		return nil
	}
	sec := p.Process.Security
	if sec == nil {
		sec = &ramdisk.Security{}
	}
	merged := maps.Clone(sbSpec.Linux.Sysctl)
	maps.Copy(merged, sec.Sysctls)
	next := *sec
	next.Sysctls = merged
	if err := secctx.Check(&next); err != nil {
		return fmt.Errorf("the Pod's sysctls cannot be applied inside the enclave: %w", err)
	}
	p.Process.Security = &next
	return nil
}

// securityOf is the spec's security context as init applies it inside the
// enclave (measured: see ramdisk.Security), nil when the spec sets none.
// Capability sets are sorted so that their order does not change PCR2.
func securityOf(spec *specs.Spec) *ramdisk.Security {
	sec := ramdisk.Security{NoNewPrivileges: spec.Process.NoNewPrivileges}
	if spec.Root != nil {
		sec.ReadonlyRootfs = spec.Root.Readonly
	}
	if c := spec.Process.Capabilities; c != nil {
		set := func(names []string) []string { return slices.Compact(slices.Sorted(slices.Values(names))) }
		sec.Capabilities = &ramdisk.Capabilities{
			Bounding: set(c.Bounding), Effective: set(c.Effective), Permitted: set(c.Permitted),
			Inheritable: set(c.Inheritable), Ambient: set(c.Ambient),
		}
	}
	if l := spec.Linux; l != nil {
		sec.MaskedPaths = slices.Clone(l.MaskedPaths)
		sec.ReadonlyPaths = slices.Clone(l.ReadonlyPaths)
		if len(l.Sysctl) > 0 {
			sec.Sysctls = maps.Clone(l.Sysctl)
		}
		sec.Seccomp = l.Seccomp
	}
	if sec.Capabilities == nil && !sec.NoNewPrivileges && !sec.ReadonlyRootfs && len(sec.MaskedPaths) == 0 &&
		len(sec.ReadonlyPaths) == 0 && len(sec.Sysctls) == 0 && sec.Seccomp == nil {
		return nil
	}
	return &sec
}

// ApplyAllocation sizes the enclave from a, the device plugin's allocation
// as kubelet recorded it. NITROPOD_* values in the container's env must
// agree with it: they are the device plugin's, and a Pod that overrides
// them is trying to claim CPUs or memory it was not given.
func (p *Plan) ApplyAllocation(a contract.Allocation) error {
	if s, ok := p.allocationEnv[nitropod.EnvCPUIDs]; ok {
		ids, err := contract.ParseCPUList(s)
		if err != nil || !slices.Equal(ids, a.CPUIDs) {
			return fmt.Errorf("env %s=%s does not match the cpus %s the device plugin allocated: NITROPOD_* variables are set by nitropod, remove them from the Pod",
				nitropod.EnvCPUIDs, contract.Clip(s), contract.JoinCPUIDs(a.CPUIDs))
		}
	}
	if s, ok := p.allocationEnv[nitropod.EnvMemoryMiB]; ok && s != strconv.Itoa(a.MemoryMiB) {
		return fmt.Errorf("env %s=%s does not match the %d MiB the device plugin allocated: NITROPOD_* variables are set by nitropod, remove them from the Pod",
			nitropod.EnvMemoryMiB, contract.Clip(s), a.MemoryMiB)
	}
	if s, ok := p.allocationEnv[nitropod.EnvEnclaveSlot]; ok && s != strconv.Itoa(a.Slot) {
		return fmt.Errorf("env %s=%s does not match the enclave slot %d the device plugin allocated: NITROPOD_* variables are set by nitropod, remove them from the Pod",
			nitropod.EnvEnclaveSlot, contract.Clip(s), a.Slot)
	}
	p.CPUIDs = slices.Clone(a.CPUIDs)
	p.CPUs = len(a.CPUIDs)
	p.MemoryMiB = a.MemoryMiB
	p.Allocated = true
	return nil
}

func uniquePorts(ps []uint16) []uint16 {
	seen := map[uint16]bool{}
	var out []uint16
	for _, p := range ps {
		if p != 0 && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// attestationPort is the measured port of the enclave's attestation API: a
// CRI container's comes from the webhook's entry (the Pod's
// nitropod.io/attestation-port, checked at admission); a container created
// directly (ctr run --annotation) may carry the annotation itself.
func attestationPort(ann map[string]string, entry *contract.Enclave) (int, error) {
	if entry != nil {
		return entry.AttestationPort, nil
	}
	if ann[nitropod.CRIContainerType] != "" {
		return 0, nil
	}
	p, err := contract.ParseAttestationPort(ann[contract.AttestationPortAnnotation])
	if err != nil {
		return 0, fmt.Errorf("container annotation: %w", err)
	}
	return p, nil
}
