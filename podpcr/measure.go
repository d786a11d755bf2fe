package podpcr

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"

	"github.com/containerd/containerd/archive"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/shim"
	"github.com/nitropod/nitropod/shim/fetch"
	"github.com/nitropod/nitropod/webhook"
)

// Options are the node's blob set and init.
type Options struct {
	Blobs, Init string
	// TempDir holds the unpacked image and the EIF being measured ("" is
	// the system's).
	TempDir string
	// Explain, when set, receives each container's measured process
	// description (what the EIF holds as nitropod/process.json), to compare
	// with a node's.
	Explain io.Writer
}

// Measure returns the measurements of every enclave container of t's Pod
// on a node with opts' blob set and init, every container running img.
// warnings are the webhook's admission warnings.
func Measure(ctx context.Context, t Template, img v1.Image, opts Options) (map[string]eif.Measurements, []string, error) {
	pod := t.Pod.DeepCopy()
	if !webhook.Managed(pod) {
		return nil, nil, fmt.Errorf("%s %s: its Pod template lacks the label %s: %q, so its Pods do not run in enclaves",
			t.Kind, t.Name, nitropod.ManagedLabel, nitropod.ManagedValue)
	}
	if pod.Name == "" {
		pod.Name = "pcr"
	}
	addServiceAccountToken(pod)
	// The licence is checked on the node and never enters the EIF.
	conv, warnings, err := webhook.Convert(pod, webhook.Config{LicenseOptional: true})
	if err != nil {
		return nil, warnings, fmt.Errorf("%s %s: the nitropod webhook would refuse its Pods: %w", t.Kind, t.Name, err)
	}
	enclaves, err := contract.ParseEnclaves(conv.Annotations[nitropod.EnclavesAnnotation])
	if err != nil {
		return nil, warnings, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, warnings, fmt.Errorf("reading the image config: %w", err)
	}
	image := imageConfig(cf.Config)
	rootfs, err := os.MkdirTemp(opts.TempDir, "nitropod-pcr-rootfs-")
	if err != nil {
		return nil, warnings, err
	}
	defer os.RemoveAll(rootfs)
	if err := Unpack(ctx, img, rootfs); err != nil {
		return nil, warnings, err
	}
	cfg := shim.DefaultConfig()
	cfg.BlobsDir, cfg.InitPath = opts.Blobs, opts.Init
	out := map[string]eif.Measurements{}
	for i := range conv.Spec.Containers {
		ctr := &conv.Spec.Containers[i]
		if _, ok := enclaves[ctr.Name]; !ok {
			continue
		}
		spec, err := criSpec(conv, ctr, &image, rootfs)
		if err != nil {
			return nil, warnings, err
		}
		plan, err := shim.PlanContainer(spec, cfg)
		if err != nil {
			return nil, warnings, fmt.Errorf("container %s: %w", ctr.Name, err)
		}
		if !plan.Enclave {
			continue
		}
		if plan.PortsFromImage {
			ports := fetch.ExposedTCPPorts(cf.Config.ExposedPorts)
			plan.Ports, plan.Process.Ports = ports, ports
		}
		if opts.Explain != nil {
			b, _ := json.Marshal(plan.Process)
			fmt.Fprintf(opts.Explain, "container %s: measured process %s\n", ctr.Name, b)
		}
		m, err := measure(rootfs, plan, cfg, ctr.Image, opts.TempDir)
		if err != nil {
			return nil, warnings, fmt.Errorf("container %s: %w", ctr.Name, err)
		}
		out[ctr.Name] = m
	}
	return out, warnings, nil
}

func measure(rootfs string, plan shim.Plan, cfg shim.Config, name, tmp string) (eif.Measurements, error) {
	f, err := os.CreateTemp(tmp, "nitropod-pcr-*.eif")
	if err != nil {
		return eif.Measurements{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	return shim.BuildEIF(f, rootfs, plan, cfg, name)
}

// Unpack applies img's layers to dir with containerd's layer applier, as
// containerd unpacks them into snapshots: owners, modes, times and
// whiteouts as on the node. Owners need root.
func Unpack(ctx context.Context, img v1.Image, dir string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("unpacking the image needs root (files keep their owners, which are measured); run nitropod pcr as root")
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("reading image layers: %w", err)
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("reading layer %d: %w", i+1, err)
		}
		_, err = archive.Apply(ctx, dir, rc)
		_, _ = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("unpacking layer %d into %s: %w", i+1, filepath.Base(dir), err)
		}
	}
	return nil
}

func imageConfig(c v1.Config) imagespec.ImageConfig {
	return imagespec.ImageConfig{
		User: c.User, Env: c.Env, Entrypoint: c.Entrypoint, Cmd: c.Cmd, WorkingDir: c.WorkingDir,
		ExposedPorts: c.ExposedPorts, Labels: c.Labels, StopSignal: c.StopSignal,
	}
}

// serviceAccountTokenPath is where the apiserver's ServiceAccount admission
// mounts the service-account token volume.
const serviceAccountTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// addServiceAccountToken does what the apiserver's ServiceAccount admission
// does before the webhook sees a Pod: unless the Pod sets
// automountServiceAccountToken: false (or already mounts something there),
// every container gets the projected token volume (kube-api-access-…) at
// serviceAccountTokenPath, read-only. Its path is in the measured delivery
// policy. A ServiceAccount that itself sets automountServiceAccountToken:
// false cannot be seen from the manifest: set it on the Pod template too.
func addServiceAccountToken(pod *corev1.Pod) {
	if a := pod.Spec.AutomountServiceAccountToken; a != nil && !*a {
		return
	}
	const vol = "kube-api-access-pcr"
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: vol, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}})
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			c := &list[i]
			if slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return path.Clean(m.MountPath) == serviceAccountTokenPath }) {
				continue
			}
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: vol, MountPath: serviceAccountTokenPath, ReadOnly: true})
		}
	}
}
