package podpcr

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/contrib/seccomp"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/pkg/cap"
	customopts "github.com/containerd/containerd/pkg/cri/opts"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

// kubeletMaskedPaths and kubeletReadonlyPaths are what kubelet sends for
// a container with procMount Default (its securitycontext defaults, as
// kubelet 1.37 sends them; the e2e test compares with a real kubelet).
var (
	kubeletMaskedPaths = []string{
		"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
		"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
	}
	kubeletReadonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// placeholderUID names the Pod in the kubelet paths of the spec; the shim
// checks that volume sources lie under the Pod's own UID.
const placeholderUID = "00000000-0000-0000-0000-000000000000"

// kubeletConfig is the CRI container config kubelet sends for ctr of pod,
// for what the measurement depends on. Env values that come from
// Secrets, ConfigMaps or the API are delivered, not measured: they are
// given as placeholders.
func kubeletConfig(pod *corev1.Pod, ctr *corev1.Container) *runtime.ContainerConfig {
	cfg := &runtime.ContainerConfig{
		Metadata:   &runtime.ContainerMetadata{Name: ctr.Name},
		Image:      &runtime.ImageSpec{Image: ctr.Image},
		Command:    ctr.Command,
		Args:       ctr.Args,
		WorkingDir: ctr.WorkingDir,
		Linux:      &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{}},
	}
	for _, e := range ctr.Env {
		v := e.Value
		if e.ValueFrom != nil || !contract.Literal(v) {
			v = "(delivered)"
		}
		cfg.Envs = append(cfg.Envs, &runtime.KeyValue{Key: e.Name, Value: v})
	}
	sc := cfg.Linux.SecurityContext
	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	csc := ctr.SecurityContext
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	if c := csc.Capabilities; c != nil {
		sc.Capabilities = &runtime.Capability{}
		for _, a := range c.Add {
			sc.Capabilities.AddCapabilities = append(sc.Capabilities.AddCapabilities, string(a))
		}
		for _, d := range c.Drop {
			sc.Capabilities.DropCapabilities = append(sc.Capabilities.DropCapabilities, string(d))
		}
	}
	runAsUser, runAsGroup := psc.RunAsUser, psc.RunAsGroup
	if csc.RunAsUser != nil {
		runAsUser = csc.RunAsUser
	}
	if csc.RunAsGroup != nil {
		runAsGroup = csc.RunAsGroup
	}
	if runAsUser != nil {
		sc.RunAsUser = &runtime.Int64Value{Value: *runAsUser}
	}
	if runAsGroup != nil {
		sc.RunAsGroup = &runtime.Int64Value{Value: *runAsGroup}
	}
	sc.SupplementalGroups = slices.Clone(psc.SupplementalGroups)
	if psc.FSGroup != nil {
		sc.SupplementalGroups = append(sc.SupplementalGroups, *psc.FSGroup)
	}
	sc.ReadonlyRootfs = csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem
	// kubelet sets no_new_privs only when allowPrivilegeEscalation is false.
	sc.NoNewPrivs = csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation
	if csc.ProcMount == nil || *csc.ProcMount == corev1.DefaultProcMount {
		sc.MaskedPaths, sc.ReadonlyPaths = kubeletMaskedPaths, kubeletReadonlyPaths
	} else {
		sc.MaskedPaths, sc.ReadonlyPaths = []string{}, []string{}
	}
	prof := psc.SeccompProfile
	if csc.SeccompProfile != nil {
		prof = csc.SeccompProfile
	}
	if prof != nil {
		switch prof.Type {
		case corev1.SeccompProfileTypeRuntimeDefault:
			sc.Seccomp = &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_RuntimeDefault}
		case corev1.SeccompProfileTypeLocalhost:
			ref := ""
			if prof.LocalhostProfile != nil {
				ref = *prof.LocalhostProfile
			}
			sc.Seccomp = &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Localhost, LocalhostRef: ref}
		}
	}
	return cfg
}

// criSpec is the OCI spec containerd's CRI writes for the container: the
// same spec options, in the same order, over the unpacked image at rootfs.
func criSpec(pod *corev1.Pod, ctr *corev1.Container, image *imagespec.ImageConfig, rootfs string) (*specs.Spec, error) {
	cfg := kubeletConfig(pod, ctr)
	sc := cfg.Linux.SecurityContext
	if sc.Seccomp != nil && sc.Seccomp.ProfileType == runtime.SecurityProfile_Localhost {
		return nil, fmt.Errorf("container %s: a Localhost seccomp profile lives on the node; nitropod pcr cannot read it", ctr.Name)
	}
	allCaps, err := cap.Current()
	if err != nil {
		return nil, err
	}
	opts := []oci.SpecOpts{
		oci.WithoutRunMount,
		customopts.WithoutDefaultSecuritySettings,
		oci.WithRootFSPath(rootfs),
		customopts.WithProcessArgs(cfg, image),
		oci.WithDefaultPathEnv,
		oci.WithNewPrivileges,
	}
	if cfg.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(cfg.WorkingDir))
	} else if image.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(image.WorkingDir))
	}
	opts = append(opts, oci.WithEnv([]string{"HOSTNAME=(delivered)"}))
	env := append([]string{}, image.Env...)
	for _, e := range cfg.Envs {
		env = append(env, e.Key+"="+e.Value)
	}
	opts = append(opts, oci.WithEnv(env),
		oci.WithMaskedPaths([]string{}), oci.WithReadonlyPaths([]string{}),
		oci.WithMaskedPaths(sc.MaskedPaths), oci.WithReadonlyPaths(sc.ReadonlyPaths),
		customopts.WithCapabilities(sc, allCaps),
		customopts.WithoutAmbientCaps,
	)
	if sc.NoNewPrivs {
		opts = append(opts, oci.WithNoNewPrivileges)
	}
	if sc.ReadonlyRootfs {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	opts = append(opts, withMountsAndAnnotations(pod, ctr))
	// containerSpecOpts: the user, its groups, seccomp.
	userstr := ""
	if sc.RunAsUser != nil {
		userstr = strconv.FormatInt(sc.RunAsUser.Value, 10)
	}
	if sc.RunAsGroup != nil {
		if userstr == "" {
			return nil, fmt.Errorf("container %s: runAsGroup needs runAsUser (kubelet refuses it too)", ctr.Name)
		}
		userstr += ":" + strconv.FormatInt(sc.RunAsGroup.Value, 10)
	}
	if userstr == "" {
		userstr = image.User
	}
	if userstr != "" {
		opts = append(opts, oci.WithUser(userstr))
	}
	gidUser := "0"
	if sc.RunAsUser != nil {
		gidUser = strconv.FormatInt(sc.RunAsUser.Value, 10)
	} else if image.User != "" {
		gidUser, _, _ = strings.Cut(image.User, ":")
	}
	opts = append(opts, customopts.WithAdditionalGIDs(gidUser), customopts.WithSupplementalGroups(sc.SupplementalGroups))
	if sc.Seccomp != nil && sc.Seccomp.ProfileType == runtime.SecurityProfile_RuntimeDefault {
		opts = append(opts, seccomp.WithDefaultProfile())
	}
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	s, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: "nitropod-pcr"}, opts...)
	if err != nil {
		return nil, fmt.Errorf("container %s: making its OCI spec as containerd would: %w", ctr.Name, err)
	}
	if pod.Spec.SecurityContext != nil && len(pod.Spec.SecurityContext.Sysctls) > 0 {
		// containerd writes the Pod's sysctls into the sandbox's spec, and
		// the shim merges them into the enclave's (InheritSandboxSysctls).
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		for _, kv := range pod.Spec.SecurityContext.Sysctls {
			if _, ok := s.Linux.Sysctl[kv.Name]; !ok {
				s.Linux.Sysctl[kv.Name] = kv.Value
			}
		}
	}
	return s, nil
}

// withMountsAndAnnotations adds the CRI annotations, the Pod's annotations
// containerd passes through (pod_annotations = nitro.k8s.anjuna.io/*,
// nitropod.io/*), and the kubelet bind mounts of the sandbox files and of
// the container's delivered volumes.
func withMountsAndAnnotations(pod *corev1.Pod, ctr *corev1.Container) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		for k, v := range pod.Annotations {
			if strings.HasPrefix(k, "nitro.k8s.anjuna.io/") || strings.HasPrefix(k, nitropod.AnnotationPrefix) {
				s.Annotations[k] = v
			}
		}
		s.Annotations[nitropod.CRIContainerType] = nitropod.CRIContainerTypeApp
		s.Annotations[nitropod.CRIContainerName] = ctr.Name
		s.Annotations[nitropod.CRISandboxName] = pod.Name
		s.Annotations[nitropod.CRISandboxNamespace] = "default"
		s.Annotations[nitropod.CRISandboxUID] = placeholderUID
		s.Annotations[nitropod.CRIImageName] = ctr.Image
		root := "/var/lib/kubelet/pods/" + placeholderUID
		for _, f := range contract.SandboxFiles {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: f, Type: "bind", Source: root + "/" + path.Base(f), Options: []string{"rbind", "rprivate", "rw"}})
		}
		kinds := map[string]string{}
		for _, v := range pod.Spec.Volumes {
			switch {
			case v.Secret != nil:
				kinds[v.Name] = contract.KubeletVolumeDir[contract.VolumeSecret]
			case v.ConfigMap != nil:
				kinds[v.Name] = contract.KubeletVolumeDir[contract.VolumeConfigMap]
			case v.DownwardAPI != nil:
				kinds[v.Name] = contract.KubeletVolumeDir[contract.VolumeDownwardAPI]
			case v.Projected != nil:
				kinds[v.Name] = contract.KubeletVolumeDir[contract.VolumeProjected]
			case v.EmptyDir != nil:
				kinds[v.Name] = contract.KubeletVolumeDir[contract.VolumeEmptyDir]
			}
		}
		for _, m := range ctr.VolumeMounts {
			src := root + "/volumes/" + kinds[m.Name] + "/" + m.Name
			if m.SubPath != "" {
				src = root + "/volume-subpaths/" + m.Name + "/" + ctr.Name + "/0"
			}
			s.Mounts = append(s.Mounts, specs.Mount{Destination: m.MountPath, Type: "bind", Source: src, Options: []string{"rbind", "rprivate", "ro"}})
		}
		return nil
	}
}
