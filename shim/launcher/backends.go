package launcher

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

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
	qc := qemu.Config{Binary: cfg.QEMUBinary, Accel: cfg.QEMUAccel, WorkDir: cfg.StateDir}
	if cfg.StateDir != "" {
		// The node's emulation attestation CA (enclave/nsm), shared by its launchers.
		qc.AttestationDir = filepath.Join(cfg.StateDir, "attestation")
	}
	return qemu.New(qc)
}

// newNitroCLI is the production backend. It cannot run on these machines
// (no Nitro hardware): enclave/nitrocli tests it against a fake nitro-cli
// modelled on the real tool's source; this path is untested on hardware.
// Every launcher of the node shares StateDir (boot lock, describe cache).
func newNitroCLI(cfg BackendConfig) (enclave.Backend, error) {
	cg := cfg.NitroCgroup
	if cg == "" {
		cg = nitrocli.DefaultCgroup
	}
	if err := nitrocli.CheckCgroup(cg); err != nil {
		return nil, err
	}
	return nitrocli.New(nitrocli.Config{Binary: cfg.NitroCLI, StateDir: cfg.StateDir, Cgroup: cg}), nil
}

// terminateNitroCLI runs terminate-enclave from the shim's delete; that
// command allocates nothing, so it stays in the shim's cgroup.
func terminateNitroCLI(ctx context.Context, r Record) error {
	b := nitrocli.New(nitrocli.Config{Binary: r.NitroCLI, KeepCgroup: true})
	if r.EnclaveID == "" {
		return b.TerminateName(ctx, r.EnclaveName)
	}
	return b.TerminateID(ctx, r.EnclaveID)
}
