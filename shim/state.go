package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/mount"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/shim/launcher"
)

// LauncherBinary is the launcher executable's name.
const LauncherBinary = "nitropod-launcher"

// stateFile in the bundle marks an enclave container and records what
// `delete` needs after a shim crash.
const stateFile = "nitropod-state.json"

type bundleState struct {
	LauncherPid int    `json:"launcherPid"`
	CgroupsPath string `json:"cgroupsPath,omitempty"`
	// EnclaveCgroup holds QEMU in emulation (outside the Pod's cgroups).
	EnclaveCgroup string `json:"enclaveCgroup,omitempty"`
	Backend       string `json:"backend"`
	NitroCLI      string `json:"nitroCLI,omitempty"`
}

func writeState(bundle string, st bundleState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := filepath.Join(bundle, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing enclave container state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(bundle, stateFile)); err != nil {
		return fmt.Errorf("writing enclave container state: %w", err)
	}
	return nil
}

func readState(bundle string) (bundleState, error) {
	var st bundleState
	b, err := os.ReadFile(filepath.Join(bundle, stateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parsing %s: %w", stateFile, err)
	}
	return st, nil
}

// terminateRecordedEnclave stops an enclave that outlived its launcher. In
// emulation QEMU is a process in the container's cgroup and is already
// gone; on Nitro the enclave is not a process, so the id the launcher
// recorded is terminated with nitro-cli.
func terminateRecordedEnclave(ctx context.Context, bundle string, st bundleState) error {
	rec, err := launcher.ReadRecord(bundle)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return launcher.TerminateRecorded(ctx, rec)
}

func unmountRootfs(rootfs string) error {
	if _, err := os.Stat(rootfs); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := mount.UnmountAll(rootfs, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmounting %s: %w", rootfs, err)
	}
	return nil
}
