package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/enclave/nitrocli"
)

// Backend names accepted in Config.Backend (package contract's).
const (
	BackendQEMU     = contract.BackendQEMU
	BackendNitroCLI = contract.BackendNitroCLI
)

// Allocation sources accepted in AllocationConfig.Source.
const (
	// AllocationKubelet sizes every CRI enclave container from the devices
	// kubelet's pod-resources API says the device plugin allocated to it.
	AllocationKubelet = "kubelet"
	// AllocationFromConfig sizes every enclave from default_cpus and
	// default_memory_mib: for nodes without kubelet (containerd alone,
	// crictl), where no Pod author can reach the runtime.
	AllocationFromConfig = "config"
	// DefaultPodResourcesSocket is kubelet's pod-resources socket under its
	// default root directory.
	DefaultPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
)

// ConfigEnv overrides the config file path when set in the shim's
// environment (containerd passes its own environment to shims); the runtime
// options' ConfigPath wins over both.
const ConfigEnv = "NITROPOD_SHIM_CONFIG"

// Config is /etc/nitropod/shim.toml.
type Config struct {
	// Backend boots enclaves: "qemu" (emulation) or "nitro-cli".
	Backend string `toml:"backend"`
	// BlobsDir is the blob set: bzImage, cmdline and kernel modules.
	BlobsDir string `toml:"blobs_dir"`
	// InitPath is nitropod-init, the enclave's PID 1.
	InitPath string `toml:"init_path"`
	// LauncherPath is nitropod-launcher; "" looks next to the shim binary.
	LauncherPath string `toml:"launcher_path"`
	// FetchPath is nitropod-fetch; "" looks next to the shim binary.
	FetchPath string `toml:"fetch_path"`
	// CacheDir holds built EIFs; CacheMaxBytes caps its size (0: no cap).
	CacheDir      string `toml:"cache_dir"`
	CacheMaxBytes int64  `toml:"cache_max_bytes"`
	// QEMU settings for the qemu backend.
	QEMU QEMUConfig `toml:"qemu"`
	// NitroCLI is the nitro-cli executable for the nitro-cli backend.
	NitroCLI string `toml:"nitro_cli"`
	// NitroCgroup is the node-level cgroup (relative to each hierarchy's
	// root, outside kubepods) that nitro-cli and its enclave processes run
	// in, so that no Pod's hugetlb or memory limits apply to them.
	NitroCgroup string `toml:"nitro_cgroup"`
	// DefaultCPUs and DefaultMemoryMiB size an enclave that is not sized by
	// an allocation: containers not created through CRI (ctr run), and every
	// container when allocation.source is "config".
	DefaultCPUs      int `toml:"default_cpus"`
	DefaultMemoryMiB int `toml:"default_memory_mib"`
	// RunDir holds per-enclave runtime files (the QEMU backend's channel
	// sockets); a short path, as unix socket paths are limited to 108 bytes.
	RunDir string `toml:"run_dir"`
	// Allocation says where a CRI container's enclave size comes from.
	Allocation AllocationConfig `toml:"allocation"`
	// License configures the licence check (package license).
	License LicenseConfig `toml:"license"`
	// S3 configures downloads of prebuilt EIFs (imageLocation).
	S3 S3Config `toml:"s3"`
	// MaxDeliveredBytes caps what is delivered into one enclave container
	// at start (env values, hostname, hosts files and volume contents).
	MaxDeliveredBytes int64 `toml:"max_delivered_bytes"`
}

// AllocationConfig says where an enclave's size comes from.
type AllocationConfig struct {
	// Source is AllocationKubelet (default) or AllocationFromConfig.
	Source string `toml:"source"`
	// PodResourcesSocket is kubelet's pod-resources socket
	// (default DefaultPodResourcesSocket; under kubelet's --root-dir).
	PodResourcesSocket string `toml:"pod_resources_socket"`
}

// LicenseConfig is the node's licence policy.
type LicenseConfig struct {
	// Enforce refuses enclave containers without a valid licence.
	Enforce bool `toml:"enforce"`
	// KeysFile holds the trusted issuer public keys (PEM).
	KeysFile string `toml:"keys_file"`
	// ClusterID names the cluster the node belongs to (any stable ID, e.g.
	// the UID of the kube-system namespace); a licence bound to a cluster
	// (`nitropod license issue --cluster`) is accepted only when it matches.
	ClusterID string `toml:"cluster_id"`
}

// S3Config points prebuilt-EIF downloads at a store.
type S3Config struct {
	// Endpoint of an S3-compatible store; "" is AWS S3.
	Endpoint string `toml:"endpoint"`
	// Region of the buckets; "" resolves it.
	Region string `toml:"region"`
	// NodeIdentityBuckets are the buckets a Pod without its own AWS
	// identity (IRSA) may boot EIFs from, downloaded with the node's
	// credentials; "*" allows every bucket. Empty (the default): every
	// imageLocation download needs the Pod's own web identity.
	NodeIdentityBuckets []string `toml:"node_identity_buckets"`
	// MaxEIFBytes refuses a prebuilt EIF larger than this, before it is
	// downloaded (default DefaultMaxEIFBytes; never more than
	// cache_max_bytes when that is set).
	MaxEIFBytes int64 `toml:"max_eif_bytes"`
}

// DefaultMaxEIFBytes is the default s3.max_eif_bytes.
const DefaultMaxEIFBytes = 4 << 30

// MaxEIFDownload is the effective limit of a prebuilt EIF download:
// s3.max_eif_bytes (or its default), capped by cache_max_bytes.
func (c Config) MaxEIFDownload() int64 {
	n := c.S3.MaxEIFBytes
	if n <= 0 {
		n = DefaultMaxEIFBytes
	}
	if c.CacheMaxBytes > 0 && c.CacheMaxBytes < n {
		n = c.CacheMaxBytes
	}
	return n
}

// QEMUConfig configures the emulated enclave.
type QEMUConfig struct {
	// Binary is qemu-system-x86_64.
	Binary string `toml:"binary"`
	// Accel is the QEMU accelerator: "tcg" (default) or "kvm".
	Accel string `toml:"accel"`
}

// DefaultConfig is what an absent or empty config file means.
func DefaultConfig() Config {
	return Config{
		Backend:          BackendQEMU,
		BlobsDir:         "/usr/share/nitro_enclaves/blobs",
		InitPath:         "/usr/local/lib/nitropod/nitropod-init",
		CacheDir:         filepath.Join(nitropod.StateDir, "eif-cache"),
		CacheMaxBytes:    10 << 30,
		QEMU:             QEMUConfig{Binary: "qemu-system-x86_64", Accel: "tcg"},
		NitroCLI:         "nitro-cli",
		NitroCgroup:      nitrocli.DefaultCgroup,
		Allocation:       AllocationConfig{Source: AllocationKubelet, PodResourcesSocket: DefaultPodResourcesSocket},
		DefaultCPUs:      2,
		DefaultMemoryMiB: 512,
		RunDir:           "/run/nitropod",

		MaxDeliveredBytes: contract.DefaultMaxDeliveredBytes,
	}
}

// LoadConfig reads the config at path over DefaultConfig. A missing file at
// the default path is not an error (the defaults apply); a missing file at
// an explicitly chosen path is.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	explicit := path != ""
	if !explicit {
		path = nitropod.ShimConfigPath
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !explicit {
			return cfg, nil
		}
		return cfg, fmt.Errorf("reading shim config: %w", err)
	}
	return ParseConfig(b, cfg)
}

// ParseConfig decodes TOML over base and validates the result.
func ParseConfig(b []byte, base Config) (Config, error) {
	cfg := base
	dec := toml.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return base, fmt.Errorf("parsing shim config: unknown setting: %s", sm.String())
		}
		return base, fmt.Errorf("parsing shim config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return base, err
	}
	return cfg, nil
}

// Validate reports the first bad setting with the value seen and the fix.
func (c Config) Validate() error {
	if c.MaxDeliveredBytes < 0 || c.MaxDeliveredBytes > contract.HardMaxDeliveredBytes {
		return fmt.Errorf("max_delivered_bytes = %d: give a size between 0 (the default, %d) and %d bytes", c.MaxDeliveredBytes, contract.DefaultMaxDeliveredBytes, contract.HardMaxDeliveredBytes)
	}
	switch c.Backend {
	case BackendQEMU, BackendNitroCLI:
	default:
		return fmt.Errorf("shim config: backend %q is not supported: use %q or %q", c.Backend, BackendQEMU, BackendNitroCLI)
	}
	if c.CacheDir == "" {
		return errors.New("shim config: cache_dir is empty: set it to a root-only directory such as " + filepath.Join(nitropod.StateDir, "eif-cache"))
	}
	if c.CacheMaxBytes < 0 {
		return fmt.Errorf("shim config: cache_max_bytes %d is negative: use 0 for no cap", c.CacheMaxBytes)
	}
	if c.S3.MaxEIFBytes < 0 {
		return fmt.Errorf("shim config: s3.max_eif_bytes %d is negative: use 0 for the default (%d)", c.S3.MaxEIFBytes, DefaultMaxEIFBytes)
	}
	switch c.Allocation.Source {
	case AllocationKubelet:
		if !filepath.IsAbs(c.Allocation.PodResourcesSocket) {
			return fmt.Errorf("shim config: allocation.pod_resources_socket %q must be an absolute path, such as %s", c.Allocation.PodResourcesSocket, DefaultPodResourcesSocket)
		}
	case AllocationFromConfig:
	default:
		return fmt.Errorf("shim config: allocation.source %q is not supported: use %q (nodes with kubelet) or %q (containerd alone)", c.Allocation.Source, AllocationKubelet, AllocationFromConfig)
	}
	if c.DefaultCPUs < 1 {
		return fmt.Errorf("shim config: default_cpus %d must be at least 1", c.DefaultCPUs)
	}
	if c.DefaultMemoryMiB < nitropod.MinEnclaveMemoryMiB {
		return fmt.Errorf("shim config: default_memory_mib %d is below the %d MiB minimum", c.DefaultMemoryMiB, nitropod.MinEnclaveMemoryMiB)
	}
	if c.Backend == BackendNitroCLI {
		if err := nitrocli.CheckCgroup(c.NitroCgroup); err != nil {
			return fmt.Errorf("shim config: nitro_cgroup: %w", err)
		}
	}
	switch c.QEMU.Accel {
	case "", "tcg", "kvm":
	default:
		return fmt.Errorf("shim config: qemu.accel %q is not supported: use \"tcg\" or \"kvm\"", c.QEMU.Accel)
	}
	return nil
}
