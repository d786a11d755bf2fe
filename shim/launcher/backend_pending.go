package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/nitropod/nitropod/enclave"
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

// Wired to enclave/nitrocli once that package lands.
func newNitroCLI(cfg BackendConfig) (enclave.Backend, error) {
	return nil, errors.New("nitro-cli backend not wired yet")
}

func terminateNitroCLI(ctx context.Context, r Record) error {
	return errors.New("nitro-cli backend not wired yet")
}
