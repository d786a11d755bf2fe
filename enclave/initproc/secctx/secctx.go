// Package secctx turns the container security context measured into an
// EIF (ramdisk.Security) into what the kernel takes: capability bit sets,
// sysctl paths and a seccomp BPF program. The shim calls Check when it
// plans a container, so that a context init could not apply is refused at
// Create, before an EIF is built; init (package initproc) compiles the
// same context again inside the enclave and applies it before exec.
//
// # Seccomp
//
// OCI seccomp profiles (what kubelet writes for RuntimeDefault and
// Localhost) are compiled here into classic BPF: init is a static binary
// without cgo, so libseccomp cannot be used, and the pure-Go assembler of
// github.com/elastic/go-seccomp-bpf (whose syscall tables this package
// uses) does not reload the syscall number after a rule with argument
// conditions, so every rule after such a rule — RuntimeDefault has several —
// would compare an argument instead of the syscall number. The program is
// plain and linear:
//
//   - a syscall of another architecture, or of the x32 ABI, kills the
//     process (as libseccomp's default for architectures a filter does not
//     cover; it also closes the classic bypass of a deny list);
//   - each rule, in the profile's order, then each of its syscalls: load
//     the syscall number, compare, check the argument conditions, return
//     the rule's action; the first match decides;
//   - the default action.
//
// Syscall names the architecture does not know are skipped, as runc does.
// All OCI comparisons are supported, SCMP_CMP_MASKED_EQ included; several
// conditions on the same argument are alternatives, the others must all
// hold (runc's reading). SCMP_ACT_NOTIFY and listenerPath are refused:
// there is no supervisor inside an enclave.
package secctx

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"runtime"
	"sort"
	"strings"

	"github.com/elastic/go-seccomp-bpf/arch"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/eif/ramdisk"
)

var capNames = map[string]int{
	"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"CAP_FOWNER": unix.CAP_FOWNER, "CAP_FSETID": unix.CAP_FSETID, "CAP_KILL": unix.CAP_KILL, "CAP_SETGID": unix.CAP_SETGID,
	"CAP_SETUID": unix.CAP_SETUID, "CAP_SETPCAP": unix.CAP_SETPCAP, "CAP_LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE,
	"CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "CAP_NET_BROADCAST": unix.CAP_NET_BROADCAST, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN,
	"CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_IPC_LOCK": unix.CAP_IPC_LOCK, "CAP_IPC_OWNER": unix.CAP_IPC_OWNER,
	"CAP_SYS_MODULE": unix.CAP_SYS_MODULE, "CAP_SYS_RAWIO": unix.CAP_SYS_RAWIO, "CAP_SYS_CHROOT": unix.CAP_SYS_CHROOT,
	"CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE, "CAP_SYS_PACCT": unix.CAP_SYS_PACCT, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN,
	"CAP_SYS_BOOT": unix.CAP_SYS_BOOT, "CAP_SYS_NICE": unix.CAP_SYS_NICE, "CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
	"CAP_SYS_TIME": unix.CAP_SYS_TIME, "CAP_SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG, "CAP_MKNOD": unix.CAP_MKNOD,
	"CAP_LEASE": unix.CAP_LEASE, "CAP_AUDIT_WRITE": unix.CAP_AUDIT_WRITE, "CAP_AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL,
	"CAP_SETFCAP": unix.CAP_SETFCAP, "CAP_MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE, "CAP_MAC_ADMIN": unix.CAP_MAC_ADMIN,
	"CAP_SYSLOG": unix.CAP_SYSLOG, "CAP_WAKE_ALARM": unix.CAP_WAKE_ALARM, "CAP_BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND,
	"CAP_AUDIT_READ": unix.CAP_AUDIT_READ, "CAP_PERFMON": unix.CAP_PERFMON, "CAP_BPF": unix.CAP_BPF,
	"CAP_CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}

// LastCap is the highest capability number this package knows.
const LastCap = unix.CAP_CHECKPOINT_RESTORE

// CapSet is the bit set of the named capabilities (CAP_CHOWN, …).
func CapSet(names []string) (uint64, error) {
	var set uint64
	for _, n := range names {
		c, ok := capNames[strings.ToUpper(n)]
		if !ok {
			return 0, fmt.Errorf("unknown capability %q: use a Linux capability name such as CAP_NET_BIND_SERVICE", n)
		}
		set |= 1 << uint(c)
	}
	return set, nil
}

// Caps are the numeric capability sets.
type Caps struct {
	Bounding, Effective, Permitted, Inheritable, Ambient uint64
}

// CapsOf converts the named sets.
func CapsOf(c *ramdisk.Capabilities) (Caps, error) {
	var out Caps
	for _, s := range []struct {
		names []string
		dst   *uint64
		set   string
	}{
		{c.Bounding, &out.Bounding, "bounding"}, {c.Effective, &out.Effective, "effective"},
		{c.Permitted, &out.Permitted, "permitted"}, {c.Inheritable, &out.Inheritable, "inheritable"},
		{c.Ambient, &out.Ambient, "ambient"},
	} {
		v, err := CapSet(s.names)
		if err != nil {
			return Caps{}, fmt.Errorf("%s capabilities: %w", s.set, err)
		}
		*s.dst = v
	}
	return out, nil
}

var sysctlKey = regexp.MustCompile(`^[a-zA-Z0-9_-]+([./][a-zA-Z0-9_-]+)*$`)

// SysctlPath is the /proc/sys file of a sysctl key (dotted or slashed).
func SysctlPath(key string) (string, error) {
	if !sysctlKey.MatchString(key) {
		return "", fmt.Errorf("sysctl %q is not a valid key: use names such as net.ipv4.ip_unprivileged_port_start", key)
	}
	return "/proc/sys/" + strings.ReplaceAll(key, ".", "/"), nil
}

// checkPath accepts clean absolute paths (masked and readonly paths).
func checkPath(kind, p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" || strings.ContainsRune(p, 0) {
		return fmt.Errorf("%s %q: want a clean absolute path other than /", kind, p)
	}
	return nil
}

// Check reports why sec could not be applied inside an enclave, if it
// cannot.
func Check(sec *ramdisk.Security) error {
	if sec == nil {
		return nil
	}
	if sec.Capabilities != nil {
		if _, err := CapsOf(sec.Capabilities); err != nil {
			return err
		}
	}
	for _, p := range sec.MaskedPaths {
		if err := checkPath("masked path", p); err != nil {
			return err
		}
	}
	for _, p := range sec.ReadonlyPaths {
		if err := checkPath("readonly path", p); err != nil {
			return err
		}
	}
	for k := range sec.Sysctls {
		if _, err := SysctlPath(k); err != nil {
			return err
		}
	}
	if sec.Seccomp != nil {
		if _, _, err := Seccomp(sec.Seccomp); err != nil {
			return fmt.Errorf("seccomp profile: %w", err)
		}
	}
	return nil
}

// maxInsns is the kernel's BPF_MAXINSNS.
const maxInsns = 4096

func action(a specs.LinuxSeccompAction, errnoRet *uint) (uint32, error) {
	ret := func(base uint32) uint32 {
		e := uint32(unix.EPERM)
		if errnoRet != nil {
			e = uint32(*errnoRet)
		}
		return base | e&unix.SECCOMP_RET_DATA
	}
	switch a {
	case specs.ActAllow:
		return unix.SECCOMP_RET_ALLOW, nil
	case specs.ActErrno:
		return ret(unix.SECCOMP_RET_ERRNO), nil
	case specs.ActTrace:
		return ret(unix.SECCOMP_RET_TRACE), nil
	case specs.ActKill, specs.ActKillThread:
		return unix.SECCOMP_RET_KILL_THREAD, nil
	case specs.ActKillProcess:
		return unix.SECCOMP_RET_KILL_PROCESS, nil
	case specs.ActTrap:
		return unix.SECCOMP_RET_TRAP, nil
	case specs.ActLog:
		return unix.SECCOMP_RET_LOG, nil
	case specs.ActNotify:
		return 0, errors.New("action SCMP_ACT_NOTIFY needs a supervisor, and there is none inside an enclave")
	}
	return 0, fmt.Errorf("unknown action %q", a)
}

// Offsets in struct seccomp_data (little-endian: the low word of an
// argument comes first).
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// x32SyscallBit marks x32 ABI syscall numbers on x86_64.
const x32SyscallBit = 0x40000000

// jump is an instruction; a JumpIf whose branch goes to "fail" is marked.
type jump struct {
	inst                    bpf.Instruction
	failOnTrue, failOnFalse bool
}

func ld(off uint32) jump { return jump{inst: bpf.LoadAbsolute{Off: off, Size: 4}} }

// condCode compiles arg OP value. Control reaches the next instruction
// when it holds, the alternative's failure target when not.
func condCode(a specs.LinuxSeccompArg) ([]jump, error) {
	if a.Index > 5 {
		return nil, fmt.Errorf("argument index %d: syscalls have arguments 0..5", a.Index)
	}
	lo, hi := uint32(offArgs+8*a.Index), uint32(offArgs+8*a.Index+4)
	vlo, vhi := uint32(a.Value), uint32(a.Value>>32)
	// cmp is the unsigned 64-bit comparison hi:lo OP v: decide on the
	// high words unless they are equal, then on the low words.
	cmp := func(strict, lower bool) []jump {
		hiWin, loCond := bpf.JumpGreaterThan, bpf.JumpGreaterOrEqual
		if lower {
			hiWin, loCond = bpf.JumpLessThan, bpf.JumpLessOrEqual
		}
		if strict {
			loCond = bpf.JumpGreaterThan
			if lower {
				loCond = bpf.JumpLessThan
			}
		}
		return []jump{
			ld(hi),
			{inst: bpf.JumpIf{Cond: hiWin, Val: vhi, SkipTrue: 3}},                 // decided: holds
			{inst: bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: vhi}, failOnTrue: true}, // decided: fails
			ld(lo),
			{inst: bpf.JumpIf{Cond: loCond, Val: vlo}, failOnFalse: true},
		}
	}
	switch a.Op {
	case specs.OpEqualTo:
		return []jump{
			ld(hi), {inst: bpf.JumpIf{Cond: bpf.JumpEqual, Val: vhi}, failOnFalse: true},
			ld(lo), {inst: bpf.JumpIf{Cond: bpf.JumpEqual, Val: vlo}, failOnFalse: true},
		}, nil
	case specs.OpNotEqual:
		return []jump{
			ld(hi), {inst: bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: vhi, SkipTrue: 2}},
			ld(lo), {inst: bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: vlo}, failOnFalse: true},
		}, nil
	case specs.OpGreaterThan:
		return cmp(true, false), nil
	case specs.OpGreaterEqual:
		return cmp(false, false), nil
	case specs.OpLessThan:
		return cmp(true, true), nil
	case specs.OpLessEqual:
		return cmp(false, true), nil
	case specs.OpMaskedEqual:
		// (arg & Value) == ValueTwo
		mlo, mhi := uint32(a.ValueTwo), uint32(a.ValueTwo>>32)
		return []jump{
			ld(hi), {inst: bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: vhi}}, {inst: bpf.JumpIf{Cond: bpf.JumpEqual, Val: mhi}, failOnFalse: true},
			ld(lo), {inst: bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: vlo}}, {inst: bpf.JumpIf{Cond: bpf.JumpEqual, Val: mlo}, failOnFalse: true},
		}, nil
	}
	return nil, fmt.Errorf("unknown comparison %q", a.Op)
}

// resolve turns an alternative (conditions, then its return) into
// instructions, pointing failed checks past the return.
func resolve(code []jump) ([]bpf.Instruction, error) {
	out := make([]bpf.Instruction, len(code))
	for i, j := range code {
		ji, ok := j.inst.(bpf.JumpIf)
		if ok && (j.failOnTrue || j.failOnFalse) {
			skip := len(code) - i - 1 // to the instruction after the return
			if skip > 255 {
				return nil, errors.New("argument conditions too long")
			}
			if j.failOnTrue {
				ji.SkipTrue = uint8(skip)
			}
			if j.failOnFalse {
				ji.SkipFalse = uint8(skip)
			}
			out[i] = ji
			continue
		}
		out[i] = j.inst
	}
	return out, nil
}

// Seccomp compiles an OCI seccomp profile into a BPF program for the
// native architecture and the flags for the seccomp(2) call.
func Seccomp(s *specs.LinuxSeccomp) ([]unix.SockFilter, uint, error) {
	if s.ListenerPath != "" {
		return nil, 0, errors.New("listenerPath: there is no seccomp supervisor inside an enclave")
	}
	var flags uint
	for _, f := range s.Flags {
		switch f {
		case specs.LinuxSeccompFlagLog:
			flags |= unix.SECCOMP_FILTER_FLAG_LOG
		case specs.LinuxSeccompFlagSpecAllow:
			flags |= unix.SECCOMP_FILTER_FLAG_SPEC_ALLOW
		case specs.LinuxSeccompFlagWaitKillableRecv:
			// Only meaningful with a notifier.
		default:
			return nil, 0, fmt.Errorf("unsupported flag %q", f)
		}
	}
	def, err := action(s.DefaultAction, s.DefaultErrnoRet)
	if err != nil {
		return nil, 0, fmt.Errorf("defaultAction: %w", err)
	}
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, 0, fmt.Errorf("seccomp filters on %s: %w", runtime.GOARCH, err)
	}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(info.ID), SkipTrue: 1},
		bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS},
	}
	if info.ID == arch.X86_64.ID {
		prog = append(prog,
			bpf.LoadAbsolute{Off: offNr, Size: 4},
			bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: x32SyscallBit, SkipFalse: 1},
			bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS},
		)
	}
	for i, r := range s.Syscalls {
		act, err := action(r.Action, r.ErrnoRet)
		if err != nil {
			return nil, 0, fmt.Errorf("syscalls[%d]: %w", i, err)
		}
		var alts [][]jump
		if len(r.Args) > 0 {
			if alts, err = alternatives(r.Args); err != nil {
				return nil, 0, fmt.Errorf("syscalls[%d]: %w", i, err)
			}
		}
		seen := map[string]bool{}
		for _, name := range r.Names {
			nr, ok := info.SyscallNames[name]
			if !ok || seen[name] {
				continue // unknown here (another architecture or kernel), or repeated
			}
			seen[name] = true
			if len(alts) == 0 {
				prog = append(prog,
					bpf.LoadAbsolute{Off: offNr, Size: 4},
					bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(nr), SkipFalse: 1},
					bpf.RetConstant{Val: act})
				continue
			}
			var block []bpf.Instruction
			for _, alt := range alts {
				code := append(append([]jump{}, alt...), jump{inst: bpf.RetConstant{Val: act}})
				insts, err := resolve(code)
				if err != nil {
					return nil, 0, fmt.Errorf("syscalls[%d] %s: %w", i, name, err)
				}
				block = append(block, insts...)
			}
			// The syscall number is compared once; a mismatch jumps over
			// the whole block (a long jump: the block may exceed 255).
			prog = append(prog,
				bpf.LoadAbsolute{Off: offNr, Size: 4},
				bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(nr), SkipTrue: 1},
				bpf.Jump{Skip: uint32(len(block))})
			prog = append(prog, block...)
		}
		if len(prog) > maxInsns {
			break
		}
	}
	prog = append(prog, bpf.RetConstant{Val: def})
	if len(prog) > maxInsns {
		return nil, 0, fmt.Errorf("the profile compiles to more than the kernel's %d BPF instructions", maxInsns)
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, 0, err
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, flags, nil
}

// alternatives turns a rule's argument conditions into alternatives, each
// a list of checks that must all hold: conditions are ANDed, except that
// several on the same argument are alternatives (as runc treats them).
func alternatives(args []specs.LinuxSeccompArg) ([][]jump, error) {
	byIndex := map[uint][][]jump{}
	for _, a := range args {
		c, err := condCode(a)
		if err != nil {
			return nil, err
		}
		byIndex[a.Index] = append(byIndex[a.Index], c)
	}
	idx := make([]uint, 0, len(byIndex))
	for i := range byIndex {
		idx = append(idx, i)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	alts := [][]jump{nil}
	for _, i := range idx {
		var next [][]jump
		for _, base := range alts {
			for _, c := range byIndex[i] {
				next = append(next, append(append([]jump{}, base...), c...))
			}
		}
		alts = next
		if len(alts) > 64 {
			return nil, errors.New("too many alternative argument conditions")
		}
	}
	return alts, nil
}
