package deviceplugin

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/nitropod/nitropod/contract"
)

// Pool sources: where the enclave CPU pool and hugepages come from.
const (
	// SourceNone only discovers what the node has (the default).
	SourceNone = "none"
	// SourceConfig sets the pool up from the pool section of Config.
	SourceConfig = "config"
	// SourceAllocator sets the pool up from AWS's nitro-enclaves-allocator
	// configuration file (allocator.yaml).
	SourceAllocator = "allocator"
)

// DefaultAllocatorConfig is where nitro-enclaves-allocator keeps its
// configuration.
const DefaultAllocatorConfig = "/etc/nitro_enclaves/allocator.yaml"

// Config is the device plugin's configuration file
// (nitropod.DevicePluginConfigPath). Every field is optional.
type Config struct {
	// MemoryBlockMiB is the size of one nitropod.io/enclave-memory device
	// (default nitropod.DefaultMemoryBlockMiB; raised to the hugepage size
	// in use when smaller).
	MemoryBlockMiB int `json:"memoryBlockMiB,omitempty"`
	// EnclaveSlots is the number of nitropod.io/enclave devices (default
	// nitropod.DefaultEnclaveSlots).
	EnclaveSlots int `json:"enclaveSlots,omitempty"`
	// Pool optionally sets up the enclave CPU pool and hugepages.
	Pool PoolConfig `json:"pool,omitempty"`
}

// PoolConfig sets the node's enclave pool up at start and on every reload,
// like nitro-enclaves-allocator: it writes ne_cpus and nr_hugepages.
type PoolConfig struct {
	// Source is SourceNone (default), SourceConfig or SourceAllocator.
	Source string `json:"source,omitempty"`
	// CPUCount asks for this many CPUs, chosen as whole cores on one NUMA
	// node, never CPU 0's core. Exclusive with CPUList.
	CPUCount int `json:"cpuCount,omitempty"`
	// CPUList names the pool's CPUs in cpu-list syntax ("2,3,6-9").
	CPUList string `json:"cpuList,omitempty"`
	// MemoryMiB is the hugepage memory to reserve per NUMA node, keyed by
	// node id ("0": 4096). Omitted nodes are left alone.
	MemoryMiB map[string]int `json:"memoryMiB,omitempty"`
	// HugepageSize is "2Mi" (default) or "1Gi".
	HugepageSize string `json:"hugepageSize,omitempty"`
	// AllocatorConfig is allocator.yaml's path for SourceAllocator
	// (default DefaultAllocatorConfig).
	AllocatorConfig string `json:"allocatorConfig,omitempty"`
}

// ParseConfig parses and checks the device plugin's configuration. Unknown
// fields are errors, so a misspelt key does not silently do nothing.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("parsing device plugin config: %w", err)
	}
	if err := c.check(); err != nil {
		return Config{}, fmt.Errorf("checking device plugin config: %w", err)
	}
	return c, nil
}

// LoadConfig reads path; a missing file is the default configuration.
func LoadConfig(path string) (Config, error) {
	if path == "" {
		return Config{}, nil
	}
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return Config{}, nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("reading device plugin config: %w", err)
	}
	return ParseConfig(data)
}

// maxBlockMiB and maxSlots keep a typo from advertising nonsense.
const (
	maxBlockMiB = 1 << 20
	maxSlots    = 1024
)

func (c Config) check() error {
	if c.MemoryBlockMiB < 0 || c.MemoryBlockMiB > maxBlockMiB {
		return fmt.Errorf("memoryBlockMiB %d is out of range: use a size between 1 and %d MiB, or omit it for the default", c.MemoryBlockMiB, maxBlockMiB)
	}
	if c.EnclaveSlots < 0 || c.EnclaveSlots > maxSlots {
		return fmt.Errorf("enclaveSlots %d is out of range: use 1 to %d, or omit it for the default", c.EnclaveSlots, maxSlots)
	}
	p := c.Pool
	switch p.Source {
	case "", SourceNone, SourceAllocator:
	case SourceConfig:
		if p.CPUCount != 0 && p.CPUList != "" {
			return fmt.Errorf("pool sets both cpuCount %d and cpuList %q: keep only one", p.CPUCount, p.CPUList)
		}
		if p.CPUCount < 0 {
			return fmt.Errorf("pool cpuCount %d is negative", p.CPUCount)
		}
		if _, err := contract.ParseCPUList(p.CPUList); err != nil {
			return fmt.Errorf("pool cpuList: %w", err)
		}
		if _, err := p.memoryByNode(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("pool source %q is unknown: use %q, %q or %q", p.Source, SourceNone, SourceConfig, SourceAllocator)
	}
	if _, err := p.pageKiB(); err != nil {
		return err
	}
	return nil
}

func (p PoolConfig) pageKiB() (int, error) {
	switch p.HugepageSize {
	case "", "2Mi", "2M", "2MiB":
		return PageSize2MiB, nil
	case "1Gi", "1G", "1GiB":
		return PageSize1GiB, nil
	}
	return 0, fmt.Errorf("pool hugepageSize %q is not supported: use 2Mi or 1Gi", p.HugepageSize)
}

func (p PoolConfig) memoryByNode() (map[int]int, error) {
	out := map[int]int{}
	for k, v := range p.MemoryMiB {
		n, err := strconv.Atoi(strings.TrimPrefix(k, "node"))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("pool memoryMiB key %q is not a numa node id: use \"0\", \"1\", …", k)
		}
		if v < 0 {
			return nil, fmt.Errorf("pool memoryMiB for numa node %d is negative (%d)", n, v)
		}
		out[n] = v
	}
	return out, nil
}

// AllocatorConfig is the part of nitro-enclaves-allocator's allocator.yaml
// that sizes the pool.
type AllocatorConfig struct {
	// MemoryMiB is the enclave memory to reserve.
	MemoryMiB int `json:"memory_mib"`
	// CPUCount is the number of CPUs to reserve (exclusive with CPUPool).
	CPUCount int `json:"cpu_count"`
	// CPUPool lists the CPUs to reserve in cpu-list syntax.
	CPUPool string `json:"cpu_pool"`
}

// ParseAllocatorConfig parses allocator.yaml. Like the allocator it ignores
// keys it does not know.
func ParseAllocatorConfig(data []byte) (AllocatorConfig, error) {
	var a AllocatorConfig
	if err := yaml.Unmarshal(data, &a); err != nil {
		return AllocatorConfig{}, fmt.Errorf("parsing allocator config: %w", err)
	}
	if a.CPUCount != 0 && a.CPUPool != "" {
		return AllocatorConfig{}, fmt.Errorf("allocator config sets both cpu_count %d and cpu_pool %q: keep only one", a.CPUCount, a.CPUPool)
	}
	if a.CPUCount < 0 || a.MemoryMiB < 0 {
		return AllocatorConfig{}, fmt.Errorf("allocator config has a negative cpu_count (%d) or memory_mib (%d)", a.CPUCount, a.MemoryMiB)
	}
	if _, err := contract.ParseCPUList(a.CPUPool); err != nil {
		return AllocatorConfig{}, fmt.Errorf("allocator config cpu_pool: %w", err)
	}
	return a, nil
}
