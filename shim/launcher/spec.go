package launcher

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/shim/deliver"
)

// File names in the container's bundle directory.
const (
	// SpecFile is the launcher's input, written by the shim (mode 0600).
	SpecFile = "nitropod-launch.json"
	// RecordFile is written by the launcher once the enclave runs.
	RecordFile = "nitropod-enclave.json"
	// LogFile receives the launcher's own diagnostics (and the enclave
	// console in debug mode).
	LogFile = "nitropod-launcher.log"
	// OOMFile is created by the launcher when the enclave kernel's OOM
	// killer killed the app; the shim then publishes TaskOOM before the
	// task's exit, so that CRI reports the reason OOMKilled.
	OOMFile = "nitropod-oom"
)

// Exit codes of the launcher that are not the app's.
const (
	// ExitSetupFailed: the launcher could not boot the enclave or start the app.
	ExitSetupFailed = 125
	// ExitNotStarted: the shim went away (or deleted the container) before Start.
	ExitNotStarted = 126
)

// The fds the shim passes (exec.Cmd.ExtraFiles order).
const (
	// StartFD is read: one byte means start; EOF before it means give up.
	StartFD = 3
	// ReadyFD is written: "ok\n" once the launcher is ready to start, or
	// "error: <message>\n".
	ReadyFD = 4
)

// Spec tells the launcher what to run.
type Spec struct {
	// ID is the container id (enclave name in logs and nitro-cli).
	ID string `json:"id"`
	// Bundle is the container's bundle directory.
	Bundle string `json:"bundle"`
	// EIFPath is the image to boot.
	EIFPath   string `json:"eifPath"`
	CPUs      int    `json:"cpus"`
	CPUIDs    []int  `json:"cpuIds,omitempty"`
	MemoryMiB int    `json:"memoryMiB"`
	Debug     bool   `json:"debug,omitempty"`
	// Backend selects and configures the enclave backend.
	Backend BackendConfig `json:"backend"`
	// Stdin, Stdout, Stderr are containerd's FIFOs ("" for none).
	Stdin  string `json:"stdin,omitempty"`
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
	// NetNS is the Pod's network namespace path; "" keeps the launcher's.
	NetNS string `json:"netns,omitempty"`
	// Ports are forwarded from every address of NetNS into the enclave.
	Ports []uint16 `json:"ports,omitempty"`
	// UDPPorts are published from every address of NetNS into the enclave.
	UDPPorts []uint16 `json:"udpPorts,omitempty"`
	// EnclaveCgroup (a path below the cgroup root, created by the shim)
	// receives what the backend starts (QEMU in emulation): on cgroup v1 the
	// forking thread joins it, on v2 QEMU is born in it (clone3
	// CLONE_INTO_CGROUP). The emulated enclave stands in for
	// Nitro's reserved CPUs and memory and must not be charged to, or
	// throttled by, the launcher limits. "" keeps it in the launcher's cgroup.
	EnclaveCgroup string `json:"enclaveCgroup,omitempty"`
	// Deliver is the configuration delivered into the enclave at start
	// (names and paths; the values are read when the enclave starts).
	Deliver *deliver.Plan `json:"deliver,omitempty"`
	// Measurements are the EIF's, printed at the top of the container's
	// log when the app has started.
	Measurements *eif.Measurements `json:"measurements,omitempty"`
}

// BackendConfig is the shim config's backend part.
type BackendConfig struct {
	// Name is "qemu" or "nitro-cli".
	Name       string `json:"name"`
	QEMUBinary string `json:"qemuBinary,omitempty"`
	QEMUAccel  string `json:"qemuAccel,omitempty"`
	NitroCLI   string `json:"nitroCLI,omitempty"`
	// NitroCgroup is the node-level cgroup nitro-cli runs in ("" is
	// nitrocli.DefaultCgroup).
	NitroCgroup string `json:"nitroCgroup,omitempty"`
	// StateDir holds backend runtime files (sockets); the shim's run_dir,
	// shared by the node's launchers (nitro-cli's boot lock and describe
	// cache).
	StateDir string `json:"stateDir,omitempty"`
}

// WriteSpec writes spec into its bundle.
func WriteSpec(spec Spec) error {
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(spec.Bundle, SpecFile), b, 0o600); err != nil {
		return fmt.Errorf("writing launcher spec: %w", err)
	}
	return nil
}

// ReadSpec reads a Spec written by WriteSpec.
func ReadSpec(path string) (Spec, error) {
	var s Spec
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("reading launcher spec: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("parsing launcher spec %s: %w", path, err)
	}
	if s.EIFPath == "" || s.Bundle == "" || s.CPUs < 1 || s.MemoryMiB < 1 {
		return s, fmt.Errorf("launcher spec %s is incomplete (eifPath, bundle, cpus, memoryMiB are required)", path)
	}
	return s, nil
}

// Record is what the launcher writes once the enclave runs (and, for
// nitro-cli, before it boots: the name alone, so that an enclave a killed
// launcher left booting can still be found).
type Record struct {
	Backend   string `json:"backend"`
	EnclaveID string `json:"enclaveId"`
	// EnclaveName is the nitro-cli enclave name (the container ID).
	EnclaveName string `json:"enclaveName,omitempty"`
	CID         uint32 `json:"cid"`
	NitroCLI    string `json:"nitroCLI,omitempty"`
}

func writeRecord(bundle string, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, RecordFile), b, 0o600)
}

// ReadRecord reads the enclave record from a bundle.
func ReadRecord(bundle string) (Record, error) {
	var r Record
	b, err := os.ReadFile(filepath.Join(bundle, RecordFile))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("parsing %s: %w", RecordFile, err)
	}
	return r, nil
}
