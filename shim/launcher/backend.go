package launcher

import (
	"context"
	"fmt"

	"github.com/nitropod/nitropod/enclave"
)

// NewBackend makes the configured enclave backend.
func NewBackend(cfg BackendConfig) (enclave.Backend, error) {
	switch cfg.Name {
	case "qemu":
		return newQEMU(cfg)
	case "nitro-cli":
		return newNitroCLI(cfg)
	}
	return nil, fmt.Errorf("enclave backend %q is not supported: set backend to \"qemu\" or \"nitro-cli\" in the shim config", cfg.Name)
}

// TerminateRecorded terminates an enclave that outlived its launcher (the
// shim's `delete` after a crash). QEMU enclaves are processes in the
// container's cgroup and were killed with it; nitro-cli enclaves are not
// processes and are terminated by id, or by name when the launcher died
// before it learnt the id.
func TerminateRecorded(ctx context.Context, r Record) error {
	if r.Backend != "nitro-cli" || r.EnclaveID == "" && r.EnclaveName == "" {
		return nil
	}
	return terminateNitroCLI(ctx, r)
}
