// Package nitropod holds the names that the webhook, device plugin, shim and
// CLI share: labels, annotations, resource names, environment variables and
// well-known paths. It imports nothing else of this module, so every other
// package can use it and no name is spelled twice (docs/ARCHITECTURE.md §8).
package nitropod

// The Anjuna Nitro Kubernetes API that user Pods are written against.
const (
	// ManagedLabel opts a Pod in; its value must be ManagedValue.
	ManagedLabel = "nitro.k8s.anjuna.io/managed"
	// ManagedValue is the only value of ManagedLabel that opts a Pod in.
	ManagedValue = "yes"
	// ImageLocationAnnotation names a prebuilt EIF as s3://bucket/key.
	ImageLocationAnnotation = "nitro.k8s.anjuna.io/imageLocation"
	// LauncherCPUAnnotation is the cpu limit of the host-side launcher.
	LauncherCPUAnnotation = "nitro.k8s.anjuna.io/launcherCPU"
	// LauncherMemoryAnnotation is the memory limit of the host-side launcher.
	LauncherMemoryAnnotation = "nitro.k8s.anjuna.io/launcherMemory"
	// DebugModeEnv set to DebugModeValue in a container's env asks for a debug enclave.
	DebugModeEnv = "ANJ_ENCLAVE_DEBUG_MODE"
	// DebugModeValue is the only value of DebugModeEnv that selects debug mode.
	DebugModeValue = "yes"
	// LicenseSecretName is the Secret that holds the licence.
	LicenseSecretName = "anjuna-license"
	// LicenseSecretKey is the key of the licence file inside LicenseSecretName.
	LicenseSecretKey = "license.yaml"
)

// Project-owned names.
const (
	// RuntimeClassName is the RuntimeClass and the containerd CRI handler.
	RuntimeClassName = "nitro"
	// RuntimeType is the containerd runtime type served by ShimBinary.
	RuntimeType = "io.containerd.nitro.v1"
	// ShimBinary is the executable containerd derives from RuntimeType.
	ShimBinary = "containerd-shim-nitro-v1"

	// ResourceEnclaveCPU counts host CPUs of the enclave pool (one device per CPU).
	ResourceEnclaveCPU = "nitropod.io/enclave-cpu"
	// ResourceEnclaveMemory counts enclave memory blocks of DefaultMemoryBlockMiB.
	ResourceEnclaveMemory = "nitropod.io/enclave-memory"
	// ResourceEnclave counts enclave slots on a node.
	ResourceEnclave = "nitropod.io/enclave"

	// DefaultMemoryBlockMiB is the size of one ResourceEnclaveMemory device.
	DefaultMemoryBlockMiB = 64
	// DefaultEnclaveSlots is the number of enclaves a node runs at once (Nitro allows 4).
	DefaultEnclaveSlots = 4
	// MinEnclaveMemoryMiB is the smallest enclave Nitro boots.
	MinEnclaveMemoryMiB = 64

	// EnvCPUIDs carries the allocated host CPU ids (sorted, comma-separated) to the shim.
	EnvCPUIDs = "NITROPOD_CPU_IDS"
	// EnvMemoryMiB carries the allocated enclave memory in MiB to the shim.
	EnvMemoryMiB = "NITROPOD_MEMORY_MIB"
	// EnvEnclaveSlot carries the allocated slot number to the shim.
	EnvEnclaveSlot = "NITROPOD_ENCLAVE_SLOT"

	// AnnotationPrefix starts every annotation nitropod writes.
	AnnotationPrefix = "nitropod.io/"
	// ExpectedPCR0Annotation pins the PCR0 a prebuilt EIF must have.
	ExpectedPCR0Annotation = "nitropod.io/expected-pcr0"
	// ExpectedPCR8Annotation pins the PCR8 (signing certificate) a prebuilt EIF must have.
	ExpectedPCR8Annotation = "nitropod.io/expected-pcr8"
	// EnclavesAnnotation is written by the webhook on every managed Pod: a JSON
	// object from app-container name to that container's enclave
	// ({"cpu":2,"memoryMiB":2048,"ports":[80],"debug":true}); containers not
	// in it run outside an enclave. The webhook package documents the format.
	EnclavesAnnotation = "nitropod.io/enclaves"
	// DeliveryAnnotation is written by the webhook on every managed Pod: per
	// enclave container, which env names the Pod spec writes literally
	// (measured), which come from Secrets, ConfigMaps and the downward API
	// (delivered at start), and which volumes are delivered. The format and
	// parser are in contract (ContainerDelivery).
	DeliveryAnnotation = "nitropod.io/delivery"
	// EgressAllowAnnotation is the Pod's optional egress allowlist, measured
	// into every enclave of the Pod (syntax in contract.ParseEgressAllow).
	EgressAllowAnnotation = "nitropod.io/egress-allow"

	// LicenseDir is where the licence Secret is mounted in a managed container's spec.
	LicenseDir = "/run/nitropod/license"
	// LicensePath is the licence file inside LicenseDir.
	LicensePath = LicenseDir + "/" + LicenseSecretKey

	// StateDir holds node state: the EIF cache and enclave records.
	StateDir = "/var/lib/nitropod"
	// ShimConfigPath is the shim's configuration file.
	ShimConfigPath = "/etc/nitropod/shim.toml"
	// DevicePluginConfigPath is the device plugin's configuration file.
	DevicePluginConfigPath = "/etc/nitropod/device-plugin.yaml"
)

// CRI annotations that containerd puts on every container's OCI spec.
const (
	CRIContainerType    = "io.kubernetes.cri.container-type"
	CRIContainerTypePod = "sandbox"
	CRIContainerTypeApp = "container"
	CRISandboxID        = "io.kubernetes.cri.sandbox-id"
	CRISandboxName      = "io.kubernetes.cri.sandbox-name"
	CRISandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
	CRISandboxUID       = "io.kubernetes.cri.sandbox-uid"
	CRIContainerName    = "io.kubernetes.cri.container-name"
	CRIImageName        = "io.kubernetes.cri.image-name"
)
