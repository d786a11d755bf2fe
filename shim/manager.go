// Adapted from containerd v1.7.30, runtime/v2/runc/manager/manager_linux.go
// (Copyright The containerd Authors, Apache License 2.0, the licence of this
// repository too). Start keeps that file's sequence: read the bundle's
// config.json, derive the shim socket from a grouping id, join a shim that
// already listens there or replace a stale socket, start this binary as the
// shim server with the socket as an extra file, and adjust its OOM score.
//
// What differs from containerd's runc manager:
//   - Grouping uses only the io.kubernetes.cri.sandbox-id annotation (not
//     io.containerd.runc.v2.group), so one shim serves exactly one Pod.
//   - The server gets GOMAXPROCS=2 (containerd: 4); there is no SCHED_CORE
//     support, and the runtime options are not read from stdin, so runc's
//     ShimCgroup option does not apply (the nitro runtime's only option is
//     ConfigPath).
//   - Stop (`delete`) looks at the bundle first: an enclave container (the
//     shim's state file is there) is cleaned up by CleanupBundle — launcher,
//     cgroups, a Nitro enclave by its recorded id, the rootfs mount; a runc
//     container (its "runtime" file is there) is handed to containerd's own
//     runc manager; anything else (a Create that died before it wrote the
//     state file) is cleaned up from what the bundle says (see Stop).
//   - Name is io.containerd.nitro.v1, and the runc manager is kept only for
//     that delegated Stop.

package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	runcmanager "github.com/containerd/containerd/runtime/v2/runc/manager"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	nitropod "github.com/nitropod/nitropod"
)

// NewManager is the shim manager for containerd-shim-nitro-v1: `start`
// starts (or joins) the Pod's shim and prints its plain ttrpc address;
// `delete` cleans up after a shim that containerd could not reach.
func NewManager() shim.Manager {
	return manager{runc: runcmanager.NewShimManager(nitropod.RuntimeType)}
}

type manager struct {
	runc shim.Manager
}

func (manager) Name() string { return nitropod.RuntimeType }

// groupID is the id the shim socket is derived from: the Pod's sandbox id
// for CRI containers, so one shim serves the Pod, else the container id.
func groupID(id string, annotations map[string]string) string {
	if g := annotations[nitropod.CRISandboxID]; g != "" {
		return g
	}
	return id
}

// Start runs with the bundle as working directory. It prints nothing but
// the address (RunManager writes the return value to stdout).
func (manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ string, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	var spec struct {
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	b, err := os.ReadFile(oci.ConfigFilename)
	if err != nil {
		return "", fmt.Errorf("reading bundle config: %w", err)
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return "", fmt.Errorf("parsing bundle config: %w", err)
	}
	address, err := shim.SocketAddress(ctx, opts.Address, groupID(id, spec.Annotations))
	if err != nil {
		return "", err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("creating shim socket: %w", err)
		}
		// The Pod's shim already runs: join it.
		if shim.CanConnect(address) {
			if err := shim.WriteAddress("address", address); err != nil {
				return "", fmt.Errorf("recording the pod shim's address: %w", err)
			}
			return address, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("removing stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("creating shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			_ = shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("starting shim server: %w", err)
	}
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	go func() { _ = cmd.Wait() }()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		return "", fmt.Errorf("adjusting the shim's oom score: %w", err)
	}
	return address, nil
}

// Stop is `delete`: containerd lost the shim (it crashed or was killed) and
// asks to clean up the container whose bundle is the working directory.
func (m manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	bundle := filepath.Join(filepath.Dir(cwd), id)
	if _, err := os.Stat(filepath.Join(bundle, stateFile)); err != nil {
		if _, err := os.Stat(filepath.Join(bundle, "runtime")); err == nil {
			// A runc container: runc's own cleanup.
			return m.runc.Stop(ctx, id)
		}
		// The shim died in Create before it recorded the state: whatever
		// it had made is found where it makes it: the container's cgroup
		// from the spec, the enclave cgroup from namespace and id (a
		// launcher in either is killed with it), and the rootfs mount.
		ns, _ := namespaces.Namespace(ctx)
		st := bundleState{EnclaveCgroup: enclaveCgroupPath(ns, id)}
		if spec, err := readBundleSpec(bundle); err == nil && spec.Linux != nil {
			st.CgroupsPath = spec.Linux.CgroupsPath
		}
		cleanupState(ctx, bundle, st)
		return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(unix.SIGKILL)}, nil
	}
	pid := CleanupBundle(ctx, bundle)
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(unix.SIGKILL), Pid: pid}, nil
}

// CleanupBundle frees what an enclave container left behind when its shim
// died: the launcher and every process in the container's cgroup (QEMU),
// the enclave (nitro-cli), the cgroup and the rootfs mount. It returns the
// launcher's pid (0 if unknown).
func CleanupBundle(ctx context.Context, bundle string) int {
	st, err := readState(bundle)
	if err != nil {
		log.G(ctx).WithError(err).Warn("reading enclave container state")
	}
	return cleanupState(ctx, bundle, st)
}

// cleanupState is CleanupBundle for a known state.
func cleanupState(ctx context.Context, bundle string, st bundleState) int {
	if st.LauncherPid > 0 && isLauncher(st.LauncherPid) {
		_ = unix.Kill(-st.LauncherPid, unix.SIGKILL)
		_ = unix.Kill(st.LauncherPid, unix.SIGKILL)
	}
	for _, cg := range []string{st.CgroupsPath, st.EnclaveCgroup} {
		if cg == "" {
			continue
		}
		if err := killCgroup(cg); err != nil {
			log.G(ctx).WithError(err).Warn("killing the container cgroup")
		}
	}
	if err := terminateRecordedEnclave(ctx, bundle, st); err != nil {
		log.G(ctx).WithError(err).Warn("terminating the enclave")
	}
	if err := removeCgroups(st.CgroupsPath, st.EnclaveCgroup); err != nil {
		log.G(ctx).WithError(err).Warn("removing the container cgroups")
	}
	if err := unmountRootfs(filepath.Join(bundle, "rootfs")); err != nil {
		log.G(ctx).WithError(err).Warn("unmounting rootfs")
	}
	return st.LauncherPid
}

// isLauncher guards against pid reuse: only a process that still runs
// nitropod-launcher is killed by a recorded pid.
func isLauncher(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	return filepath.Base(exe) == LauncherBinary || errors.Is(err, os.ErrNotExist)
}
