package webhook

import (
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

const (
	mib          = 1 << 20
	minMemoryMiB = nitropod.MinEnclaveMemoryMiB
	maxCPU       = contract.MaxEnclaveCPU
	maxMemoryMiB = contract.MaxEnclaveMemoryMiB
)

// Config is what a cluster operator can change about the conversion. The
// zero value is usable: empty fields take the defaults of DefaultConfig. Its
// JSON/YAML form is the webhook's configuration file.
type Config struct {
	// RuntimeClassName is written into spec.runtimeClassName
	// (default nitropod.RuntimeClassName).
	RuntimeClassName string `json:"runtimeClassName,omitempty"`
	// MemoryBlockMiB is the size of one nitropod.io/enclave-memory device;
	// it must equal the device plugin's (default nitropod.DefaultMemoryBlockMiB).
	MemoryBlockMiB int64 `json:"memoryBlockMiB,omitempty"`
	// MaxEnclaves is the most app containers a managed Pod may have
	// (default nitropod.DefaultEnclaveSlots, the enclaves a node runs).
	MaxEnclaves int `json:"maxEnclaves,omitempty"`
	// DefaultCPU, when set, is used for an app container without
	// limits.cpu (with a warning); unset, limits.cpu is required.
	DefaultCPU *resource.Quantity `json:"defaultCPU,omitempty"`
	// DefaultMemory, when set, is used for an app container without
	// limits.memory (with a warning); unset, limits.memory is required.
	DefaultMemory *resource.Quantity `json:"defaultMemory,omitempty"`
	// LicenseOptional admits managed Pods without the anjuna-license volume.
	LicenseOptional bool `json:"licenseOptional,omitempty"`
}

// DefaultConfig is the configuration nitropod-webhook runs with unless told
// otherwise.
func DefaultConfig() Config {
	return Config{
		RuntimeClassName: nitropod.RuntimeClassName,
		MemoryBlockMiB:   nitropod.DefaultMemoryBlockMiB,
		MaxEnclaves:      nitropod.DefaultEnclaveSlots,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.RuntimeClassName == "" {
		c.RuntimeClassName = d.RuntimeClassName
	}
	if c.MemoryBlockMiB <= 0 {
		c.MemoryBlockMiB = d.MemoryBlockMiB
	}
	if c.MaxEnclaves <= 0 {
		c.MaxEnclaves = d.MaxEnclaves
	}
	return c
}

// Validate reports a configuration Convert cannot work with.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.MemoryBlockMiB > maxMemoryMiB {
		return fmt.Errorf("memory block of %d MiB is too large", c.MemoryBlockMiB)
	}
	if q := c.DefaultCPU; q != nil {
		if _, msg := enclaveCPU(*q); msg != "" {
			return fmt.Errorf("default cpu %q %s", q.String(), msg)
		}
	}
	if q := c.DefaultMemory; q != nil {
		if _, msg := enclaveMemoryMiB(*q); msg != "" {
			return fmt.Errorf("default memory %q %s", q.String(), msg)
		}
	}
	return nil
}

// DeniedError is returned by Convert for a Pod that cannot run in an
// enclave. Each violation is a sentence for the user naming the container,
// the value seen and the rule or fix.
type DeniedError struct {
	Violations []string
}

// Error joins the violations, one per line.
func (e *DeniedError) Error() string { return strings.Join(e.Violations, "\n") }

// IsDenied reports whether err is (or wraps) a *DeniedError.
func IsDenied(err error) bool {
	var d *DeniedError
	return errors.As(err, &d)
}

// Managed reports whether the Pod opts in to conversion.
func Managed(pod *corev1.Pod) bool {
	return pod.Labels[nitropod.ManagedLabel] == nitropod.ManagedValue
}

// Convert returns the Pod as it must be stored, with admission warnings, or a
// *DeniedError. It does not modify pod. A Pod that is not Managed comes back
// unchanged. See the package documentation for the rules.
func Convert(pod *corev1.Pod, cfg Config) (*corev1.Pod, []string, error) {
	out := pod.DeepCopy()
	if !Managed(pod) {
		if v, ok := pod.Labels[nitropod.ManagedLabel]; ok {
			return out, []string{fmt.Sprintf("label %s is %q, not %q: the Pod is not converted and runs outside an enclave",
				nitropod.ManagedLabel, v, nitropod.ManagedValue)}, nil
		}
		return out, nil, nil
	}
	c := &converter{cfg: cfg.withDefaults(), pod: out}
	c.convert()
	if len(c.violations) > 0 {
		return nil, c.warnings, &DeniedError{Violations: c.violations}
	}
	return out, c.warnings, nil
}

type converter struct {
	cfg        Config
	pod        *corev1.Pod
	violations []string
	warnings   []string
	launcher   corev1.ResourceList
}

func (c *converter) deny(format string, args ...any) {
	c.violations = append(c.violations, fmt.Sprintf(format, args...))
}

func (c *converter) warn(format string, args ...any) {
	c.warnings = append(c.warnings, fmt.Sprintf(format, args...))
}

func (c *converter) convert() {
	spec := &c.pod.Spec
	switch rc := spec.RuntimeClassName; {
	case rc == nil || *rc == "":
		name := c.cfg.RuntimeClassName
		spec.RuntimeClassName = &name
	case *rc != c.cfg.RuntimeClassName:
		c.deny("runtimeClassName %q: a managed Pod runs with RuntimeClass %q; remove runtimeClassName or set it to %q",
			*rc, c.cfg.RuntimeClassName, c.cfg.RuntimeClassName)
	}
	if n := len(spec.Containers); n > c.cfg.MaxEnclaves {
		c.deny("the Pod has %d containers but a node runs at most %d enclaves; use at most %d containers (init containers do not count)",
			n, c.cfg.MaxEnclaves, c.cfg.MaxEnclaves)
	}
	c.reservedAnnotations()
	c.reservedEnv()
	c.imageLocation()
	c.egressAllow()
	c.launcherResources()
	c.hostNamespaces()
	license := c.licenseVolume()

	extraExec := c.execCommands()
	enclaves := make(map[string]contract.Enclave, len(spec.Containers))
	delivery := make(map[string]contract.ContainerDelivery, len(spec.Containers))
	for i := range spec.Containers {
		ctr := &spec.Containers[i]
		e, ok := c.container(ctr, license)
		if ok {
			e.Exec = c.containerExec(ctr, extraExec[ctr.Name])
			enclaves[ctr.Name] = e
			delivery[ctr.Name] = c.delivery(ctr, license)
		}
	}
	for _, ic := range spec.InitContainers {
		c.warn("init container %s runs outside the enclave (with runc, in the Pod sandbox)", ic.Name)
	}
	c.attestationPort(enclaves)
	if len(c.violations) > 0 {
		return
	}
	if c.pod.Annotations == nil {
		c.pod.Annotations = map[string]string{}
	}
	c.pod.Annotations[nitropod.EnclavesAnnotation] = contract.MarshalEnclaves(enclaves)
	c.pod.Annotations[nitropod.DeliveryAnnotation] = contract.MarshalDelivery(delivery)
}

// hostNamespaces refuses host namespaces: an app in an enclave runs on the
// enclave's own kernel and cannot share the node's network, PIDs or IPC.
func (c *converter) hostNamespaces() {
	spec := &c.pod.Spec
	for _, h := range []struct {
		set  bool
		name string
	}{{spec.HostNetwork, "hostNetwork"}, {spec.HostPID, "hostPID"}, {spec.HostIPC, "hostIPC"}} {
		if h.set {
			c.deny("%s: an enclave has its own kernel and cannot share the node's namespaces; remove %s (ports the Pod declares are forwarded into the enclave)", h.name, h.name)
		}
	}
}

// userAnnotations are the nitropod.io/ annotations a Pod's author may
// write; every other name under that prefix is nitropod's own, and a Pod
// that brings one is refused rather than believed (nitropod.io/enclaves is
// written by Convert itself, over whatever the Pod had).
var userAnnotations = map[string]bool{
	nitropod.ExpectedPCR0Annotation:    true,
	nitropod.ExpectedPCR8Annotation:    true,
	nitropod.EnclavesAnnotation:        true,
	nitropod.DeliveryAnnotation:        true,
	contract.AttestationPortAnnotation: true,
	nitropod.EgressAllowAnnotation:     true,
	contract.ExecCommandsAnnotation:    true,
}

func (c *converter) reservedAnnotations() {
	for _, k := range slices.Sorted(maps.Keys(c.pod.Annotations)) {
		if strings.HasPrefix(k, nitropod.AnnotationPrefix) && !userAnnotations[k] {
			var may []string
			for _, a := range slices.Sorted(maps.Keys(userAnnotations)) {
				if a != nitropod.EnclavesAnnotation && a != nitropod.DeliveryAnnotation { // written by Convert
					may = append(may, a)
				}
			}
			c.deny("annotation %s is reserved for nitropod; remove it (a Pod may set only %s)", k, strings.Join(may, ", "))
		}
	}
}

// reservedEnv refuses NITROPOD_* variables in any container: they carry the
// device plugin's allocation to the shim, and kubelet puts a container's own
// env after the device plugin's, so a Pod could otherwise try to override
// its enclave's size.
func (c *converter) reservedEnv() {
	each := func(kind, name string, env []corev1.EnvVar, from []corev1.EnvFromSource) {
		for _, e := range env {
			if strings.HasPrefix(e.Name, reservedEnvPrefix) {
				c.deny("%s %s: env %s is reserved for nitropod (NITROPOD_* variables carry the enclave allocation); rename it", kind, name, e.Name)
			}
		}
		for _, f := range from {
			if strings.HasPrefix(f.Prefix, reservedEnvPrefix) {
				c.deny("%s %s: envFrom prefix %q is reserved for nitropod (NITROPOD_* variables carry the enclave allocation); choose another prefix", kind, name, f.Prefix)
			}
		}
	}
	for _, ctr := range c.pod.Spec.InitContainers {
		each("init container", ctr.Name, ctr.Env, ctr.EnvFrom)
	}
	for _, ctr := range c.pod.Spec.Containers {
		each("container", ctr.Name, ctr.Env, ctr.EnvFrom)
	}
}

// reservedEnvPrefix starts the names of the device plugin's variables.
const reservedEnvPrefix = "NITROPOD_"

func (c *converter) imageLocation() {
	loc, ok := c.pod.Annotations[nitropod.ImageLocationAnnotation]
	if !ok {
		return
	}
	if _, err := contract.ParseS3Location(loc); err != nil {
		c.deny("annotation %s: %v", nitropod.ImageLocationAnnotation, err)
		return
	}
	ctrs := c.pod.Spec.Containers
	if len(ctrs) != 1 {
		c.deny("annotation %s names one EIF but the Pod has %d containers; use one container, or remove the annotation to build an EIF per container",
			nitropod.ImageLocationAnnotation, len(ctrs))
		return
	}
	c.warn("the enclave boots %s (annotation %s); the image %q of container %s is ignored",
		loc, nitropod.ImageLocationAnnotation, ctrs[0].Image, ctrs[0].Name)
}

// egressAllow refuses a Pod whose egress allowlist the shim would refuse.
func (c *converter) egressAllow() {
	if raw, ok := c.pod.Annotations[nitropod.EgressAllowAnnotation]; ok {
		if _, err := contract.ParseEgressAllow(raw); err != nil {
			c.deny("annotation %s: %v", nitropod.EgressAllowAnnotation, err)
		}
	}
}

func (c *converter) launcherResources() {
	c.launcher = corev1.ResourceList{}
	for _, a := range []struct {
		annotation string
		resource   corev1.ResourceName
		example    string
	}{
		{nitropod.LauncherCPUAnnotation, corev1.ResourceCPU, `"750m" or "1"`},
		{nitropod.LauncherMemoryAnnotation, corev1.ResourceMemory, `"512Mi" or "4Gi"`},
	} {
		v, ok := c.pod.Annotations[a.annotation]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			c.deny("annotation %s %q is not a Kubernetes quantity; use e.g. %s, or remove it for no limit", a.annotation, v, a.example)
			continue
		}
		if q.Sign() <= 0 {
			c.deny("annotation %s %q must be greater than zero; use e.g. %s, or remove it for no limit", a.annotation, v, a.example)
			continue
		}
		c.launcher[a.resource] = q
	}
}

// licenseVolume returns the name of the Pod's anjuna-license Secret volume,
// or "" when there is none.
func (c *converter) licenseVolume() string {
	for _, v := range c.pod.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == nitropod.LicenseSecretName {
			return v.Name
		}
	}
	if !c.cfg.LicenseOptional {
		c.deny("the Pod has no volume for the licence Secret %q; create it with `kubectl create secret generic %s --from-file=%s=anjuna-license.yaml` "+
			"and add the volume {name: %s, secret: {secretName: %s}} to the Pod",
			nitropod.LicenseSecretName, nitropod.LicenseSecretName, nitropod.LicenseSecretKey, nitropod.LicenseSecretName, nitropod.LicenseSecretName)
	}
	return ""
}

// container converts one app container and returns its enclave; ok is false
// when a violation was recorded.
func (c *converter) container(ctr *corev1.Container, license string) (contract.Enclave, bool) {
	before := len(c.violations)
	if sc := ctr.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged {
		c.deny("container %s: privileged cannot apply inside an enclave (it has no host devices and its own kernel); remove securityContext.privileged, or add the capabilities the app needs", ctr.Name)
	}
	e := c.enclaveSize(ctr)
	if len(c.violations) == before {
		c.setResources(ctr, e)
	}
	if license != "" {
		c.mountLicense(ctr, license)
	}
	e.Debug = c.debugMode(ctr)
	seen, seenUDP := map[int32]bool{}, map[int32]bool{}
	for _, p := range ctr.Ports {
		// Out-of-range ports are the apiserver's validation to refuse.
		valid := p.ContainerPort >= 1 && p.ContainerPort <= 65535
		if valid && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) && !seen[p.ContainerPort] {
			seen[p.ContainerPort] = true
			e.Ports = append(e.Ports, p.ContainerPort)
		}
		if valid && p.Protocol == corev1.ProtocolUDP && !seenUDP[p.ContainerPort] {
			seenUDP[p.ContainerPort] = true
			e.UDPPorts = append(e.UDPPorts, p.ContainerPort)
		}
	}
	return e, len(c.violations) == before
}

// enclaveSize reads the enclave's vCPUs and memory from the container.
func (c *converter) enclaveSize(ctr *corev1.Container) contract.Enclave {
	var e contract.Enclave
	lim, req := ctr.Resources.Limits, ctr.Resources.Requests
	if q, ok := lim[nitropod.ResourceEnclaveCPU]; ok {
		// Converted before (or written in nitropod's own form).
		n, msg := enclaveCPU(q)
		if msg != "" {
			c.deny("container %s: limits[%s] %q %s", ctr.Name, nitropod.ResourceEnclaveCPU, q.String(), msg)
		}
		e.CPU = n
		blocks, ok := lim[nitropod.ResourceEnclaveMemory]
		if !ok {
			c.deny("container %s: limits[%s] is set but limits[%s] is not; set both, or give limits.cpu and limits.memory instead",
				ctr.Name, nitropod.ResourceEnclaveCPU, nitropod.ResourceEnclaveMemory)
			return e
		}
		if blocks.CmpInt64(1) < 0 || blocks.CmpInt64(maxMemoryMiB/c.cfg.MemoryBlockMiB) > 0 || blocks.MilliValue()%1000 != 0 {
			c.deny("container %s: limits[%s] %q must be a whole number of %d MiB blocks", ctr.Name, nitropod.ResourceEnclaveMemory, blocks.String(), c.cfg.MemoryBlockMiB)
			return e
		}
		e.MemoryMiB = blocks.Value() * c.cfg.MemoryBlockMiB
		if e.MemoryMiB < minMemoryMiB {
			c.deny("container %s: limits[%s] %q is %d MiB, below the %d MiB minimum of a Nitro enclave",
				ctr.Name, nitropod.ResourceEnclaveMemory, blocks.String(), e.MemoryMiB, minMemoryMiB)
		}
		return e
	}

	cpu, ok := lim[corev1.ResourceCPU]
	switch {
	case ok:
		n, msg := enclaveCPU(cpu)
		if msg != "" {
			c.deny("container %s: limits.cpu %q %s", ctr.Name, cpu.String(), msg)
		}
		e.CPU = n
	case c.cfg.DefaultCPU != nil:
		cpu = *c.cfg.DefaultCPU
		e.CPU, _ = enclaveCPU(cpu) // checked by Config.Validate
		c.warn("container %s: no limits.cpu, using the cluster default %q", ctr.Name, cpu.String())
	default:
		c.deny(`container %s: limits.cpu is required (the enclave's vCPUs); set an even integer such as "2"`, ctr.Name)
	}

	mem, ok := lim[corev1.ResourceMemory]
	switch {
	case ok:
		m, msg := enclaveMemoryMiB(mem)
		if msg != "" {
			c.deny("container %s: limits.memory %q %s", ctr.Name, mem.String(), msg)
		}
		e.MemoryMiB = m
	case c.cfg.DefaultMemory != nil:
		mem = *c.cfg.DefaultMemory
		e.MemoryMiB, _ = enclaveMemoryMiB(mem) // checked by Config.Validate
		c.warn("container %s: no limits.memory, using the cluster default %q", ctr.Name, mem.String())
	default:
		c.deny(`container %s: limits.memory is required (the enclave's memory); set at least "%dMi", e.g. "2048Mi"`, ctr.Name, minMemoryMiB)
	}

	for _, r := range []struct {
		name  corev1.ResourceName
		limit resource.Quantity
		known bool
	}{{corev1.ResourceCPU, cpu, e.CPU != 0}, {corev1.ResourceMemory, mem, e.MemoryMiB != 0}} {
		if q, ok := req[r.name]; ok && r.known && q.Cmp(r.limit) > 0 {
			c.deny("container %s: requests.%s %q exceeds limits.%s %q; lower the request or remove it",
				ctr.Name, r.name, q.String(), r.name, r.limit.String())
		}
	}

	if e.MemoryMiB != 0 {
		blocks := (e.MemoryMiB + c.cfg.MemoryBlockMiB - 1) / c.cfg.MemoryBlockMiB
		if rounded := blocks * c.cfg.MemoryBlockMiB; rounded != e.MemoryMiB || mem.Value()%mib != 0 {
			c.warn("container %s: enclave memory %q rounded up to %dMi (whole %d MiB blocks)", ctr.Name, mem.String(), rounded, c.cfg.MemoryBlockMiB)
			e.MemoryMiB = rounded
		}
	}
	return e
}

// enclaveCPU checks a vCPU quantity: a whole, even number, at least 2. The
// message completes "limits.cpu "3" …".
func enclaveCPU(q resource.Quantity) (int64, string) {
	if q.CmpInt64(maxCPU) > 0 {
		return 0, fmt.Sprintf("is more than %d vCPUs", maxCPU)
	}
	milli := q.MilliValue()
	if milli < 2000 {
		return 0, `must be at least 2 (one hyperthread pair); use "2"`
	}
	if milli%2000 != 0 {
		lo := milli / 2000 * 2
		return 0, fmt.Sprintf(`must be an even integer (vCPUs come in hyperthread pairs); use "%d" or "%d"`, lo, lo+2)
	}
	return milli / 1000, ""
}

// enclaveMemoryMiB checks a memory quantity and returns it in MiB, rounded
// up. The message completes "limits.memory "32Mi" …".
func enclaveMemoryMiB(q resource.Quantity) (int64, string) {
	if q.CmpInt64(maxMemoryMiB*mib) > 0 {
		return 0, fmt.Sprintf("is more than %d TiB", maxMemoryMiB>>20)
	}
	b := q.Value()
	if b < minMemoryMiB*mib {
		return 0, fmt.Sprintf(`is below the %d MiB minimum of a Nitro enclave; use at least "%dMi"`, minMemoryMiB, minMemoryMiB)
	}
	return (b + mib - 1) / mib, ""
}

// setResources replaces the container's cpu and memory by the enclave
// resources and the launcher's limits.
func (c *converter) setResources(ctr *corev1.Container, e contract.Enclave) {
	blocks := e.MemoryMiB / c.cfg.MemoryBlockMiB
	r := &ctr.Resources
	if r.Limits == nil {
		r.Limits = corev1.ResourceList{}
	}
	if r.Requests == nil {
		r.Requests = corev1.ResourceList{}
	}
	for _, l := range []corev1.ResourceList{r.Limits, r.Requests} {
		delete(l, corev1.ResourceCPU)
		delete(l, corev1.ResourceMemory)
		for name, q := range c.launcher {
			l[name] = q.DeepCopy()
		}
		l[nitropod.ResourceEnclaveCPU] = *resource.NewQuantity(e.CPU, resource.DecimalSI)
		l[nitropod.ResourceEnclaveMemory] = *resource.NewQuantity(blocks, resource.DecimalSI)
		l[nitropod.ResourceEnclave] = *resource.NewQuantity(1, resource.DecimalSI)
	}
}

// underLicenseDir reports whether a mountPath, cleaned as the runtime
// cleans it, is the licence directory or inside it (where a second mount
// would hide or replace the licence the shim checks).
func underLicenseDir(p string) bool {
	p = path.Clean("/" + p)
	return p == nitropod.LicenseDir || strings.HasPrefix(p, nitropod.LicenseDir+"/")
}

func (c *converter) mountLicense(ctr *corev1.Container, volume string) {
	found := false
	for i := range ctr.VolumeMounts {
		m := &ctr.VolumeMounts[i]
		switch {
		case m.Name == volume && !found:
			found = true
			m.MountPath = nitropod.LicenseDir
			m.ReadOnly = true
			m.SubPath, m.SubPathExpr = "", ""
			m.MountPropagation = nil
			m.RecursiveReadOnly = nil
		case underLicenseDir(m.MountPath):
			c.deny("container %s: volumeMount %s at %s is at or under %s, where the licence is mounted; choose another mountPath", ctr.Name, m.Name, m.MountPath, nitropod.LicenseDir)
		}
	}
	if !found {
		ctr.VolumeMounts = append(ctr.VolumeMounts, corev1.VolumeMount{Name: volume, MountPath: nitropod.LicenseDir, ReadOnly: true})
	}
}

func (c *converter) debugMode(ctr *corev1.Container) bool {
	var env *corev1.EnvVar
	for i := range ctr.Env {
		if ctr.Env[i].Name == nitropod.DebugModeEnv {
			env = &ctr.Env[i] // the last definition wins, as in the kubelet
		}
	}
	switch {
	case env == nil:
		return false
	case env.ValueFrom != nil:
		c.warn("container %s: %s comes from valueFrom, which admission cannot see; the enclave is recorded as production mode", ctr.Name, nitropod.DebugModeEnv)
		return false
	case env.Value == nitropod.DebugModeValue:
		return true
	default:
		c.warn("container %s: %s is %q, not %q: the enclave runs in production mode", ctr.Name, nitropod.DebugModeEnv, env.Value, nitropod.DebugModeValue)
		return false
	}
}

// execCommands reads the commands the Pod's author allows in production
// enclaves (contract.ExecCommandsAnnotation), by container.
func (c *converter) execCommands() map[string][][]string {
	raw, ok := c.pod.Annotations[contract.ExecCommandsAnnotation]
	if !ok {
		return nil
	}
	m, err := contract.ParseExecCommands(raw)
	if err != nil {
		c.deny("%v", err)
		return nil
	}
	names := map[string]bool{}
	for _, ctr := range c.pod.Spec.Containers {
		names[ctr.Name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(m)) {
		if !names[name] {
			c.deny("annotation %s lists commands for container %s, which the Pod does not have; use the name of one of its containers", contract.ExecCommandsAnnotation, contract.Clip(name))
		}
	}
	return m
}

// containerExec is the list of commands a production enclave of ctr may
// execute: its exec probes and postStart/preStop exec hooks, which kubelet
// runs with exactly these argv vectors, then the author's extra ones.
func (c *converter) containerExec(ctr *corev1.Container, extra [][]string) [][]string {
	var cmds [][]string
	for _, p := range []*corev1.Probe{ctr.LivenessProbe, ctr.ReadinessProbe, ctr.StartupProbe} {
		if p != nil && p.Exec != nil && len(p.Exec.Command) > 0 {
			cmds = contract.MergeExecCommands(cmds, p.Exec.Command)
		}
	}
	if l := ctr.Lifecycle; l != nil {
		for _, h := range []*corev1.LifecycleHandler{l.PostStart, l.PreStop} {
			if h != nil && h.Exec != nil && len(h.Exec.Command) > 0 {
				cmds = contract.MergeExecCommands(cmds, h.Exec.Command)
			}
		}
	}
	cmds = contract.MergeExecCommands(cmds, extra...)
	if err := contract.CheckExecCommands(ctr.Name, cmds); err != nil {
		c.deny("%v (exec probes, lifecycle hooks and %s together); shorten the list", err, contract.ExecCommandsAnnotation)
		return nil
	}
	return cmds
}
