package local

import (
	"fmt"
	"math"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/enclave"
)

// Pod is what `nitropod run -f POD.yaml` takes from a Pod manifest's first
// container.
type Pod struct {
	// Image is the container image reference.
	Image string
	// Entrypoint, Cmd, Env and Cwd come from command, args, env and workingDir.
	Entrypoint, Cmd, Env []string
	Cwd                  string
	// CPUs and MemoryMiB come from resources.limits (0 when unset).
	CPUs, MemoryMiB int
	// Debug is set by ANJ_ENCLAVE_DEBUG_MODE=yes.
	Debug bool
	// Ports are the containerPorts, published on 127.0.0.1 at the same port.
	Ports []enclave.PortMapping
}

// ParsePod reads a Pod manifest (YAML or JSON).
func ParsePod(manifest []byte) (*Pod, error) {
	var p corev1.Pod
	if err := yaml.UnmarshalStrict(manifest, &p); err != nil {
		if err2 := yaml.Unmarshal(manifest, &p); err2 != nil {
			return nil, fmt.Errorf("reading pod manifest: %w", err2)
		}
	}
	if p.Kind != "" && p.Kind != "Pod" {
		return nil, fmt.Errorf("reading pod manifest: kind is %q, want Pod", p.Kind)
	}
	if len(p.Spec.Containers) == 0 {
		return nil, fmt.Errorf("reading pod manifest: spec.containers is empty")
	}
	c := p.Spec.Containers[0]
	if c.Image == "" {
		return nil, fmt.Errorf("reading pod manifest: container %q has no image", c.Name)
	}
	out := &Pod{Image: c.Image, Entrypoint: c.Command, Cmd: c.Args, Cwd: c.WorkingDir}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			return nil, fmt.Errorf("pod manifest: env %s uses valueFrom, which `nitropod run` cannot resolve outside a cluster: give a value", e.Name)
		}
		out.Env = append(out.Env, e.Name+"="+e.Value)
		if e.Name == nitropod.DebugModeEnv && e.Value == nitropod.DebugModeValue {
			out.Debug = true
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		v := q.MilliValue()
		if v%1000 != 0 || v <= 0 {
			return nil, fmt.Errorf("pod manifest: limits.cpu %s must be a whole number of vCPUs for an enclave (e.g. \"2\")", q.String())
		}
		out.CPUs = int(v / 1000)
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		mib := q.Value() >> 20
		if mib <= 0 || mib > math.MaxInt32 {
			return nil, fmt.Errorf("pod manifest: limits.memory %s is not a usable enclave size (e.g. \"2048Mi\")", q.String())
		}
		out.MemoryMiB = int(mib)
	}
	for _, cp := range c.Ports {
		if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
			continue
		}
		hp := cp.HostPort
		if hp == 0 {
			hp = cp.ContainerPort
		}
		out.Ports = append(out.Ports, enclave.PortMapping{
			HostAddr:    "127.0.0.1:" + strconv.Itoa(int(hp)),
			EnclavePort: uint16(cp.ContainerPort),
		})
	}
	return out, nil
}
