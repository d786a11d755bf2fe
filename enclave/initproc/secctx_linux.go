package initproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave/initproc/secctx"
)

// The container's security context (ramdisk.Security) is applied in two
// steps, in runc's order:
//
//  1. init itself, as root, before it starts the app: sysctls (before
//     /proc/sys may become read-only), masked paths, readonly paths, and
//     the read-only remount of the root filesystem. These are properties of
//     the enclave's single mount namespace.
//  2. the exec stage, a copy of init (/proc/self/exe with ExecStageArg)
//     started in the app's place: on one locked thread it drops the
//     bounding set, keeps capabilities across the switch to the app's
//     user, groups and supplementary groups, sets the effective, permitted,
//     inheritable and ambient sets, no_new_privs and, last, the seccomp
//     filter, then executes the app on that same thread, so that the app
//     inherits exactly that thread's credentials. Without no_new_privs the
//     filter needs CAP_SYS_ADMIN, so it is installed before the
//     capabilities are dropped, as runc does; the profile must then allow
//     the few syscalls that follow (setresuid, capset, prctl, execve), as
//     RuntimeDefault does.
//
// A failure in the exec stage is written to a close-on-exec pipe, which
// init reads: an exec that succeeded closes it empty, so Start reports a
// security context that could not be applied as it reports a missing
// command.

// ExecStageArg as argv[1] makes nitropod-init the exec stage.
const ExecStageArg = "--nitropod-exec-stage"

// execRequest is what init hands the exec stage (fd 3).
type execRequest struct {
	Path     string            `json:"path"`
	Args     []string          `json:"args"`
	Env      []string          `json:"env"`
	UID      uint32            `json:"uid"`
	GID      uint32            `json:"gid"`
	Groups   []uint32          `json:"groups"`
	Security *ramdisk.Security `json:"security"`
}

// startApp starts the app as forkExec does, applying the process's
// security context when it has one.
func startApp(proc *ramdisk.Process, path string, env []string, cwd string, files []uintptr, groups []uint32) (int, error) {
	oomKillsAtStart = oomKills()
	if proc.Security == nil {
		return forkExec(path, proc.Args, env, cwd, files, proc.UID, proc.GID, groups)
	}
	if err := applyFilesystem(proc.Security); err != nil {
		return 0, fmt.Errorf("applying the security context: %w", err)
	}
	return startProcess(proc, proc.Args, path, env, cwd, files, groups, false)
}

// startProcess starts args (path resolved) with proc's user, groups and
// security context through the exec stage (forkExec without a context),
// in a new session; tty makes files[0] its controlling terminal. The
// filesystem part of the context is already applied (startApp did).
func startProcess(proc *ramdisk.Process, args []string, path string, env []string, cwd string, files []uintptr, groups []uint32, tty bool) (int, error) {
	if proc.Security == nil {
		attr := &syscall.SysProcAttr{
			Setsid:     true,
			Setctty:    tty,
			Credential: &syscall.Credential{Uid: proc.UID, Gid: proc.GID, Groups: groups},
		}
		return syscall.ForkExec(path, args, &syscall.ProcAttr{Dir: cwd, Env: env, Files: files, Sys: attr})
	}
	req, err := json.Marshal(execRequest{Path: path, Args: args, Env: env, UID: proc.UID, GID: proc.GID, Groups: groups, Security: proc.Security})
	if err != nil {
		return 0, err
	}
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer reqR.Close()
	defer reqW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer errR.Close()
	defer errW.Close()
	attr := &syscall.ProcAttr{
		Dir:   cwd,
		Env:   []string{},
		Files: append(append([]uintptr{}, files...), reqR.Fd(), errW.Fd()),
		Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: tty},
	}
	pid, err := syscall.ForkExec("/proc/self/exe", []string{"nitropod-init", ExecStageArg}, attr)
	if err != nil {
		return 0, fmt.Errorf("starting the exec stage: %w", err)
	}
	reqR.Close()
	errW.Close()
	go func() {
		_, _ = reqW.Write(req)
		reqW.Close()
	}()
	// Empty at EOF: the app was executed (the pipe is close-on-exec).
	msg, _ := io.ReadAll(io.LimitReader(errR, 64<<10))
	if len(msg) > 0 {
		return 0, errors.New(string(msg))
	}
	return pid, nil
}

// applyFilesystem applies the parts of the context that belong to the
// enclave's mounts and kernel: sysctls, masked paths, readonly paths, the
// read-only root.
func applyFilesystem(sec *ramdisk.Security) error {
	keys := make([]string, 0, len(sec.Sysctls))
	for k := range sec.Sysctls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p, err := secctx.SysctlPath(k)
		if err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(sec.Sysctls[k]), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", k, sec.Sysctls[k], err)
		}
	}
	for _, p := range sec.MaskedPaths {
		if err := maskPath(p); err != nil {
			return fmt.Errorf("masking %s: %w", p, err)
		}
	}
	for _, p := range sec.ReadonlyPaths {
		if err := readonlyBind(p); err != nil {
			return fmt.Errorf("making %s read-only: %w", p, err)
		}
	}
	if sec.ReadonlyRootfs {
		if err := remountReadonly("/"); err != nil {
			return fmt.Errorf("making the root filesystem read-only: %w", err)
		}
	}
	return nil
}

// maskPath hides p: an empty read-only tmpfs over a directory, /dev/null
// over anything else. A path that does not exist needs no mask.
func maskPath(p string) error {
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0,mode=0555")
	}
	return unix.Mount("/dev/null", p, "", unix.MS_BIND, "")
}

// readonlyBind makes p a read-only bind mount of itself.
func readonlyBind(p string) error {
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	return remountReadonly(p)
}

// remountReadonly remounts the mount at p read-only, keeping its other
// per-mount flags (nosuid, nodev, noexec).
func remountReadonly(p string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return err
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	return unix.Mount("", p, "", flags, "")
}

// execStage is the exec stage's main: it never returns when the app was
// executed.
func execStage() int {
	runtime.LockOSThread() // every credential change below is this thread's
	errW := os.NewFile(4, "exec-stage-errors")
	unix.CloseOnExec(4)
	fail := func(err error) int {
		_, _ = errW.Write([]byte(err.Error()))
		return 1
	}
	reqF := os.NewFile(3, "exec-stage-request")
	b, err := io.ReadAll(io.LimitReader(reqF, 16<<20))
	reqF.Close()
	if err != nil {
		return fail(fmt.Errorf("reading the exec request: %w", err))
	}
	var req execRequest
	if err := json.Unmarshal(b, &req); err != nil {
		return fail(fmt.Errorf("decoding the exec request: %w", err))
	}
	if err := applyProcess(&req); err != nil {
		return fail(err)
	}
	return fail(errors.New("unreachable: exec returned"))
}

// lastCap is the enclave kernel's highest capability.
func lastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return secctx.LastCap
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return secctx.LastCap
	}
	return n
}

func prctl(op, a2, a3 uintptr) error {
	if _, _, e := unix.RawSyscall6(unix.SYS_PRCTL, op, a2, a3, 0, 0, 0); e != 0 {
		return e
	}
	return nil
}

// applyProcess changes this thread's credentials and executes the app.
func applyProcess(req *execRequest) error {
	sec := req.Security
	if sec == nil {
		sec = &ramdisk.Security{}
	}
	var caps *secctx.Caps
	if sec.Capabilities != nil {
		c, err := secctx.CapsOf(sec.Capabilities)
		if err != nil {
			return err
		}
		mask := uint64(1)<<uint(lastCap()+1) - 1
		c.Bounding &= mask
		c.Effective &= mask
		c.Permitted &= mask
		c.Inheritable &= mask
		c.Ambient &= mask
		caps = &c
	}
	var filter []unix.SockFilter
	var filterFlags uint
	if sec.Seccomp != nil {
		var err error
		if filter, filterFlags, err = secctx.Seccomp(sec.Seccomp); err != nil {
			return fmt.Errorf("seccomp profile: %w", err)
		}
	}
	if caps != nil {
		for c := 0; c <= lastCap(); c++ {
			if caps.Bounding&(1<<uint(c)) == 0 {
				if err := prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0); err != nil && !errors.Is(err, unix.EINVAL) {
					return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
				}
			}
		}
	}
	if filter != nil && !sec.NoNewPrivileges {
		if err := loadSeccomp(filter, filterFlags); err != nil {
			return err
		}
	}
	if caps != nil {
		if err := prctl(unix.PR_SET_KEEPCAPS, 1, 0); err != nil {
			return fmt.Errorf("keeping capabilities: %w", err)
		}
	}
	var gp unsafe.Pointer
	if len(req.Groups) > 0 {
		gp = unsafe.Pointer(&req.Groups[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(req.Groups)), uintptr(gp), 0); e != 0 {
		return fmt.Errorf("setting supplementary groups %v: %w", req.Groups, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(req.GID), uintptr(req.GID), uintptr(req.GID)); e != 0 {
		return fmt.Errorf("setting gid %d: %w", req.GID, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(req.UID), uintptr(req.UID), uintptr(req.UID)); e != 0 {
		return fmt.Errorf("setting uid %d: %w", req.UID, e)
	}
	if caps != nil {
		if err := prctl(unix.PR_SET_KEEPCAPS, 0, 0); err != nil {
			return fmt.Errorf("clearing keep-capabilities: %w", err)
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		for i := 0; i < 2; i++ {
			data[i].Effective = uint32(caps.Effective >> (32 * i))
			data[i].Permitted = uint32(caps.Permitted >> (32 * i))
			data[i].Inheritable = uint32(caps.Inheritable >> (32 * i))
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return fmt.Errorf("setting capabilities: %w", err)
		}
		if err := prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("clearing ambient capabilities: %w", err)
		}
		for c := 0; c <= lastCap(); c++ {
			if caps.Ambient&(1<<uint(c)) != 0 {
				if err := prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c)); err != nil {
					return fmt.Errorf("raising ambient capability %d (it must be permitted and inheritable too): %w", c, err)
				}
			}
		}
	}
	if sec.NoNewPrivileges {
		if err := prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0); err != nil {
			return fmt.Errorf("setting no_new_privs: %w", err)
		}
		if filter != nil {
			if err := loadSeccomp(filter, filterFlags); err != nil {
				return err
			}
		}
	}
	// The caller names the path: the message is the bare errno, as
	// syscall.ForkExec reports it.
	return unix.Exec(req.Path, req.Args, req.Env)
}

func loadSeccomp(filter []unix.SockFilter, flags uint) error {
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if _, _, e := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, uintptr(flags), uintptr(unsafe.Pointer(&prog))); e != 0 {
		return fmt.Errorf("installing the seccomp filter: %w", e)
	}
	return nil
}

// oomKillsAtStart is the enclave kernel's OOM kill count when the app
// started.
var oomKillsAtStart = -1

// oomKills is the oom_kill counter of /proc/vmstat (-1: unknown).
func oomKills() int {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return n
			}
		}
	}
	return -1
}

// reportExit reports the app's exit status to the host, with OOMKilled
// when SIGKILL ended it and the enclave kernel's OOM killer killed a
// process since it started.
func (i *initState) reportExit(ctx context.Context, code, sig int) error {
	oom := false
	if sig == int(unix.SIGKILL) && oomKillsAtStart >= 0 {
		oom = oomKills() > oomKillsAtStart
	}
	if oom {
		i.logf("the app was killed by the enclave's OOM killer: give the container more memory")
	}
	return i.guest.ExitOOM(ctx, code, sig, oom)
}
