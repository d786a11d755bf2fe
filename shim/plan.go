package shim

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eif/ramdisk"
)

// Plan is what the shim decided about one container from its OCI spec and
// the shim config: whether it runs in an enclave and, if so, how.
type Plan struct {
	// Enclave is false for the pause container and for app containers the
	// webhook left out of nitropod.io/enclaves; those run through runc.
	Enclave bool
	// CPUs, CPUIDs, MemoryMiB size the enclave (device plugin env, else the
	// webhook annotation, else the config defaults).
	CPUs      int
	CPUIDs    []int
	MemoryMiB int
	// Debug is ANJ_ENCLAVE_DEBUG_MODE=yes in the process env.
	Debug bool
	// Ports are the TCP ports the launcher listens on in the Pod's network
	// namespace and forwards into the enclave.
	Ports []uint16
	// PortsFromImage is set when the webhook recorded no ports for the
	// container: the image's EXPOSEd TCP ports are forwarded instead.
	PortsFromImage bool
	// ImageLocation is the s3:// URL of a prebuilt EIF, or "".
	ImageLocation string
	// Process is what runs inside the enclave (measured into the EIF).
	Process ramdisk.Process
}

// EnclaveAnnotation is one container's entry in nitropod.EnclavesAnnotation,
// written by the webhook.
type EnclaveAnnotation struct {
	CPU       int      `json:"cpu"`
	MemoryMiB int      `json:"memoryMiB"`
	Ports     []uint16 `json:"ports,omitempty"`
	Debug     bool     `json:"debug,omitempty"`
}

// runtimeEnv names are set per allocation by the device plugin; they are
// not part of the measured process (they would make every allocation a new
// EIF) but size the enclave.
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
	var entry *EnclaveAnnotation
	if raw, ok := ann[nitropod.EnclavesAnnotation]; ok && ann[nitropod.CRIContainerType] == nitropod.CRIContainerTypeApp {
		all := map[string]EnclaveAnnotation{}
		if err := json.Unmarshal([]byte(raw), &all); err != nil {
			return Plan{}, fmt.Errorf("parsing annotation %s=%q: %w (it is written by the nitropod webhook; re-create the Pod)", nitropod.EnclavesAnnotation, raw, err)
		}
		e, ok := all[ann[nitropod.CRIContainerName]]
		if !ok {
			return Plan{}, nil // the webhook left this container out of the enclave
		}
		entry = &e
	}
	if spec.Process == nil || len(spec.Process.Args) == 0 {
		return Plan{}, fmt.Errorf("container spec has no process args: an enclave container needs a command")
	}
	p := Plan{Enclave: true, CPUs: cfg.DefaultCPUs, MemoryMiB: cfg.DefaultMemoryMiB, ImageLocation: ann[nitropod.ImageLocationAnnotation]}
	if entry != nil {
		if entry.CPU > 0 {
			p.CPUs = entry.CPU
		}
		if entry.MemoryMiB > 0 {
			p.MemoryMiB = entry.MemoryMiB
		}
		p.Ports = append(p.Ports, entry.Ports...)
		p.Debug = entry.Debug
	}
	env := map[string]string{}
	proc := ramdisk.Process{
		Args:     append([]string(nil), spec.Process.Args...),
		Cwd:      spec.Process.Cwd,
		UID:      spec.Process.User.UID,
		GID:      spec.Process.User.GID,
		Hostname: spec.Hostname,
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
	// The env is measured into the EIF, so it must not depend on the order
	// kubelet happens to emit it in (service and device-plugin variables come
	// from maps): one entry per name, the last value winning as in
	// containerd's WithEnv, sorted by name.
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if !runtimeEnv[k] {
			proc.Env = append(proc.Env, k+"="+env[k])
		}
	}
	if env[nitropod.DebugModeEnv] == nitropod.DebugModeValue {
		p.Debug = true
	}
	if s := env[nitropod.EnvCPUIDs]; s != "" {
		ids, err := ParseCPUList(s)
		if err != nil {
			return Plan{}, fmt.Errorf("env %s=%q from the device plugin: %w", nitropod.EnvCPUIDs, s, err)
		}
		p.CPUIDs = ids
		p.CPUs = len(ids)
	}
	if s := env[nitropod.EnvMemoryMiB]; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < nitropod.MinEnclaveMemoryMiB {
			return Plan{}, fmt.Errorf("env %s=%q from the device plugin: want a number of MiB ≥ %d", nitropod.EnvMemoryMiB, s, nitropod.MinEnclaveMemoryMiB)
		}
		p.MemoryMiB = n
	}
	p.PortsFromImage = entry == nil || entry.Ports == nil
	p.Ports = uniquePorts(p.Ports)
	proc.Ports = p.Ports
	p.Process = proc
	return p, nil
}

// ParseCPUList parses a Linux cpu-list ("1,3", "2-5,8") into sorted ids.
func ParseCPUList(s string) ([]int, error) {
	seen := map[int]bool{}
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("bad cpu id %q in cpu list %q", part, s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b-a > 4096 {
				return nil, fmt.Errorf("bad cpu range %q in cpu list %q", part, s)
			}
		}
		for i := a; i <= b; i++ {
			seen[i] = true
		}
	}
	ids := make([]int, 0, len(seen))
	for i := range seen {
		ids = append(ids, i)
	}
	sort.Ints(ids)
	return ids, nil
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
