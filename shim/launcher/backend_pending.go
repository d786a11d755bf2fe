package launcher

import (
	"context"
	"errors"

	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/qemu"
)

func newQEMU(cfg BackendConfig) (enclave.Backend, error) {
	return qemu.New(qemu.Config{Binary: cfg.QEMUBinary, Accel: cfg.QEMUAccel, WorkDir: cfg.StateDir})
}

// Wired to enclave/nitrocli once that package lands.
func newNitroCLI(cfg BackendConfig) (enclave.Backend, error) {
	return nil, errors.New("nitro-cli backend not wired yet")
}

func terminateNitroCLI(ctx context.Context, r Record) error {
	return errors.New("nitro-cli backend not wired yet")
}
