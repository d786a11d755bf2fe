// Package deliver is the host side of delivered configuration (README
// "Measured and delivered"): what of a container's OCI spec is not measured
// into its EIF but handed to enclave init at start over the agent channel —
// the hostname, the env the Pod takes from Secrets, ConfigMaps, the
// downward API and kubelet, the sandbox's /etc/hosts, /etc/resolv.conf and
// /etc/hostname, and the files of its secret, configMap, downwardAPI and
// projected volumes — and the watch that carries kubelet's later updates of
// those volumes into the enclave.
//
// The shim makes a Plan from the OCI spec and the webhook's
// nitropod.io/delivery annotation (PlanMounts); the launcher collects the
// values (Collect) when it starts the enclave, so they are read from the
// kubelet's volumes, in memory, and never written anywhere by nitropod.
//
// Sources are bind-mount sources from the OCI spec that kubelet made; a
// mount is delivered only when its source lies in the Pod's own kubelet
// volume directory of the kind the annotation names, so a Pod cannot make
// the root-owned launcher read another Pod's files. Files are read with
// safefile.ReadBeneath (regular files only, nothing outside the volume,
// bounded), and everything one container gets is capped (MaxBytes).
package deliver

import (
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/enclave/agent"
)

// KindFile is the kind of a Mount that is one sandbox file (/etc/hosts…).
const KindFile = "file"

// Plan is what the launcher delivers to one container: it goes into the
// launcher's spec file, so it holds names and paths, never values.
type Plan struct {
	// Hostname is the Pod's hostname (the OCI spec's).
	Hostname string `json:"hostname,omitempty"`
	// Env are the names of the delivered env; the launcher takes their
	// values from the bundle's config.json.
	Env []string `json:"env,omitempty"`
	// Mounts are the delivered files and volumes.
	Mounts []Mount `json:"mounts,omitempty"`
	// MaxBytes caps everything delivered (contract.DefaultMaxDeliveredBytes
	// when 0).
	MaxBytes int64 `json:"maxBytes,omitempty"`
}

// Mount is one delivered file or volume.
type Mount struct {
	contract.Mount
	// Source is the bind-mount source on the node (kubelet's).
	Source string `json:"source,omitempty"`
}

// Empty reports whether nothing is to be delivered.
func (p Plan) Empty() bool { return p.Hostname == "" && len(p.Env) == 0 && len(p.Mounts) == 0 }

// PlanMounts picks the mounts of spec to deliver: the sandbox files and the
// volumes d names. podUID is the Pod's UID (CRI's sandbox-uid annotation);
// when set, volume sources must lie in that Pod's kubelet directory.
func PlanMounts(spec *specs.Spec, d contract.ContainerDelivery, podUID string) ([]Mount, error) {
	var out []Mount
	found := map[string]bool{}
	for _, m := range spec.Mounts {
		if !isBind(m) {
			continue
		}
		dest := path.Clean("/" + m.Destination)
		if slices.Contains(contract.SandboxFiles, dest) {
			out = append(out, Mount{Mount: contract.Mount{Path: dest, Kind: KindFile, Volume: path.Base(dest)}, Source: m.Source})
			continue
		}
		i := slices.IndexFunc(d.Mounts, func(dm contract.Mount) bool { return dm.Path == dest })
		if i < 0 {
			continue
		}
		dm := d.Mounts[i]
		if err := checkSource(m.Source, dm, podUID); err != nil {
			return nil, err
		}
		found[dest] = true
		out = append(out, Mount{Mount: dm, Source: m.Source})
	}
	for _, dm := range d.Mounts {
		if !found[dm.Path] {
			return nil, fmt.Errorf("volume %s: the container spec has no mount at %s (was the Pod changed after admission?)", dm.Volume, dm.Path)
		}
	}
	return out, nil
}

func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	return slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// checkSource accepts a source in kubelet's directory for the Pod's volume
// of that kind (…/pods/UID/volumes/kubernetes.io~KIND/NAME[/…]) or, for a
// subPath, kubelet's bind of it (…/pods/UID/volume-subpaths/NAME/…).
func checkSource(src string, dm contract.Mount, podUID string) error {
	src = filepath.Clean(src)
	pod := "/pods/"
	if podUID != "" {
		pod += podUID + "/"
	}
	want := pod + "volumes/" + contract.KubeletVolumeDir[dm.Kind] + "/" + dm.Volume
	ok := strings.Contains(src+"/", want+"/")
	if dm.SubPath {
		ok = ok || strings.Contains(src, pod+"volume-subpaths/"+dm.Volume+"/")
	}
	if !ok || strings.Contains(src, "/../") {
		return fmt.Errorf("volume %s at %s: its source %s is not kubelet's %s volume of this Pod; not delivering it", dm.Volume, dm.Path, src, dm.Kind)
	}
	return nil
}

// Collect reads everything p delivers: the env values from env (the OCI
// spec's, K=V) and the files of every mount. It fails, naming the size,
// when the total exceeds the cap. versions holds each atomic volume's
// current content directory (for Watch).
func Collect(p Plan, env []string) (d agent.Delivery, versions []string, err error) {
	limit := p.MaxBytes
	if limit <= 0 {
		limit = contract.DefaultMaxDeliveredBytes
	}
	values := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		values[k] = v
	}
	d.Hostname = p.Hostname
	for _, k := range p.Env {
		if v, ok := values[k]; ok {
			d.Env = append(d.Env, k+"="+v)
		}
	}
	b := &budget{limit: limit, total: int64(len(d.Hostname))}
	for _, e := range d.Env {
		b.total += int64(len(e))
	}
	versions = make([]string, len(p.Mounts))
	for i, m := range p.Mounts {
		dm, ver, err := readMount(m, b)
		if err != nil {
			return agent.Delivery{}, nil, err
		}
		versions[i] = ver
		d.Mounts = append(d.Mounts, dm)
	}
	if b.total > limit {
		return agent.Delivery{}, nil, &TooLargeError{Size: b.total, Limit: limit}
	}
	return d, versions, nil
}

// TooLargeError is a delivery over the cap.
type TooLargeError struct{ Size, Limit int64 }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("the configuration delivered into the enclave (env, volumes, hosts files) is %d bytes (%.1f MiB), more than the %d bytes (%.1f MiB) allowed per container; "+
		"make the Secrets and ConfigMaps it mounts smaller, or raise max_delivered_bytes in the node's shim config",
		e.Size, float64(e.Size)/(1<<20), e.Limit, float64(e.Limit)/(1<<20))
}
