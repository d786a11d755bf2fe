package launcher

import (
	"context"
	"fmt"
	"os"

	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/nitrocli"
	"github.com/nitropod/nitropod/enclave/qemu"
)

func newQEMU(cfg BackendConfig) (enclave.Backend, error) {
	if cfg.StateDir != "" {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("creating enclave run directory: %w", err)
		}
	}
	return qemu.New(qemu.Config{Binary: cfg.QEMUBinary, Accel: cfg.QEMUAccel, WorkDir: cfg.StateDir})
}

// newNitroCLI is the production backend. It cannot run on these machines
// (no Nitro hardware): its command lines and JSON parsing are unit tested
// in enclave/nitrocli; this path is untested on hardware.
func newNitroCLI(cfg BackendConfig) (enclave.Backend, error) {
	return nitrocli.New(nitrocli.Config{Binary: cfg.NitroCLI}), nil
}

func terminateNitroCLI(ctx context.Context, r Record) error {
	return nitrocli.New(nitrocli.Config{Binary: r.NitroCLI}).TerminateID(ctx, r.EnclaveID)
}
