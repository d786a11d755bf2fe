package secctx

import (
	"encoding/binary"
	"runtime"
	"strings"
	"testing"

	ctrseccomp "github.com/containerd/containerd/contrib/seccomp"
	"github.com/elastic/go-seccomp-bpf/arch"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/eif/ramdisk"
)

const auditArchX86_64 = 0xc000003e

// run evaluates the compiled filter on one syscall, as the kernel would:
// the VM loads 32-bit words big-endian, so each word of seccomp_data is
// stored that way at the offset the kernel (little-endian) would use.
func run(t *testing.T, prog []unix.SockFilter, arch uint32, nr int, args ...uint64) uint32 {
	t.Helper()
	raw := make([]bpf.RawInstruction, len(prog))
	for i, f := range prog {
		raw[i] = bpf.RawInstruction{Op: f.Code, Jt: f.Jt, Jf: f.Jf, K: f.K}
	}
	insts, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("disassembling the filter")
	}
	vm, err := bpf.NewVM(insts)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64)
	binary.BigEndian.PutUint32(data[0:], uint32(nr))
	binary.BigEndian.PutUint32(data[4:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(data[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(data[20+8*i:], uint32(a>>32))
	}
	out, err := vm.Run(data)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(out)
}

func nr(t *testing.T, name string) int {
	t.Helper()
	info, err := arch.GetInfo("")
	if err != nil {
		t.Skip(err)
	}
	n, ok := info.SyscallNames[name]
	if !ok {
		t.Fatalf("no syscall %s", name)
	}
	return n
}

func TestSeccompRuntimeDefault(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the expectations are x86_64's")
	}
	prof := ctrseccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}})
	prog, _, err := Seccomp(prof)
	if err != nil {
		t.Fatal(err)
	}
	if len(prog) < 100 || len(prog) > maxInsns {
		t.Errorf("%d instructions", len(prog))
	}
	eperm := unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	for _, c := range []struct {
		name string
		args []uint64
		want uint32
	}{
		{"read", nil, unix.SECCOMP_RET_ALLOW},
		{"execve", nil, unix.SECCOMP_RET_ALLOW},
		{"unshare", nil, eperm},
		{"mount", nil, eperm},
		{"kexec_load", nil, eperm},
		// clone without namespace flags is allowed, with CLONE_NEWUSER not.
		{"clone", []uint64{17}, unix.SECCOMP_RET_ALLOW},
		{"clone", []uint64{unix.CLONE_NEWUSER | 17}, eperm},
		// personality(PER_LINUX) allowed, another persona not.
		{"personality", []uint64{0}, unix.SECCOMP_RET_ALLOW},
		{"personality", []uint64{0x0040000}, eperm},
		// clone3 gets ENOSYS so that libc falls back to clone.
		{"clone3", nil, unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
	} {
		if got := run(t, prog, auditArchX86_64, nr(t, c.name), c.args...); got != c.want {
			t.Errorf("%s%v: %#x, want %#x", c.name, c.args, got, c.want)
		}
	}
	// Another architecture, or the x32 ABI, kills the process.
	if got := run(t, prog, 0x40000003 /* i386 */, 1); got != unix.SECCOMP_RET_KILL_PROCESS {
		t.Errorf("i386 syscall: %#x, want kill", got)
	}
	if got := run(t, prog, auditArchX86_64, 0x40000000|nr(t, "unshare")); got != unix.SECCOMP_RET_KILL_PROCESS {
		t.Errorf("x32 syscall: %#x, want kill", got)
	}
}

func TestSeccompCustom(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the expectations are x86_64's")
	}
	enoent := uint(unix.ENOENT)
	prog, flags, err := Seccomp(&specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Flags:         []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog},
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"mkdir", "mkdirat", "no_such_syscall"}, Action: specs.ActErrno, ErrnoRet: &enoent},
			{Names: []string{"openat"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{{Index: 2, Value: unix.O_WRONLY | unix.O_RDWR, ValueTwo: unix.O_RDWR, Op: specs.OpMaskedEqual}}},
			{Names: []string{"dup3"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{{Index: 0, Value: 5, Op: specs.OpGreaterThan}, {Index: 1, Value: 1 << 33, Op: specs.OpLessEqual}}},
			{Names: []string{"kill"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{{Index: 1, Value: 9, Op: specs.OpEqualTo}, {Index: 1, Value: 15, Op: specs.OpEqualTo}}},
			{Names: []string{"socket"}, Action: specs.ActKillProcess, Args: []specs.LinuxSeccompArg{{Index: 0, Value: unix.AF_PACKET, Op: specs.OpEqualTo}}},
			{Names: []string{"socket"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{
				{Index: 0, Value: unix.AF_INET, Op: specs.OpEqualTo}, {Index: 1, Value: unix.SOCK_RAW, Op: specs.OpEqualTo},
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if flags != unix.SECCOMP_FILTER_FLAG_LOG {
		t.Errorf("flags %#x", flags)
	}
	for _, c := range []struct {
		name string
		args []uint64
		want uint32
	}{
		{"mkdirat", nil, unix.SECCOMP_RET_ERRNO | uint32(unix.ENOENT)},
		{"read", nil, unix.SECCOMP_RET_ALLOW},
		{"socket", []uint64{unix.AF_PACKET}, unix.SECCOMP_RET_KILL_PROCESS},
		{"socket", []uint64{unix.AF_INET, unix.SOCK_RAW}, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{"socket", []uint64{unix.AF_INET, unix.SOCK_STREAM}, unix.SECCOMP_RET_ALLOW},
		{"socket", []uint64{unix.AF_INET | 1<<32, unix.SOCK_RAW}, unix.SECCOMP_RET_ALLOW},
		{"openat", []uint64{0, 0, unix.O_RDWR | unix.O_CREAT}, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{"openat", []uint64{0, 0, unix.O_RDONLY}, unix.SECCOMP_RET_ALLOW},
		{"openat", []uint64{0, 0, unix.O_WRONLY}, unix.SECCOMP_RET_ALLOW},
		{"dup3", []uint64{6, 1 << 33}, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{"dup3", []uint64{6, 1<<33 + 1}, unix.SECCOMP_RET_ALLOW},
		{"dup3", []uint64{5, 0}, unix.SECCOMP_RET_ALLOW},
		{"dup3", []uint64{1 << 32, 0}, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{"kill", []uint64{1, 9}, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{"kill", []uint64{1, 15}, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{"kill", []uint64{1, 10}, unix.SECCOMP_RET_ALLOW},
	} {
		if got := run(t, prog, auditArchX86_64, nr(t, c.name), c.args...); got != c.want {
			t.Errorf("%s%v: %#x, want %#x", c.name, c.args, got, c.want)
		}
	}
}

func TestSeccompRefused(t *testing.T) {
	for _, c := range []struct {
		p    specs.LinuxSeccomp
		want string
	}{
		{specs.LinuxSeccomp{DefaultAction: specs.ActNotify}, "supervisor"},
		{specs.LinuxSeccomp{DefaultAction: "SCMP_ACT_BOGUS"}, "unknown action"},
		{specs.LinuxSeccomp{DefaultAction: specs.ActAllow, ListenerPath: "/run/x"}, "listenerPath"},
		{specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Flags: []specs.LinuxSeccompFlag{"SECCOMP_FILTER_FLAG_NEW"}}, "unsupported flag"},
		{specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{"read"}, Action: specs.ActErrno,
			Args: []specs.LinuxSeccompArg{{Index: 7, Op: specs.OpEqualTo}}}}}, "argument index"},
	} {
		if _, _, err := Seccomp(&c.p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want %q", c.p, err, c.want)
		}
	}
}

func TestCheck(t *testing.T) {
	ok := &ramdisk.Security{
		Capabilities:  &ramdisk.Capabilities{Bounding: []string{"CAP_CHOWN", "cap_net_raw"}},
		MaskedPaths:   []string{"/proc/kcore"},
		ReadonlyPaths: []string{"/proc/sys"},
		Sysctls:       map[string]string{"net.ipv4.ping_group_range": "0 1", "kernel/shm_rmid_forced": "1"},
	}
	if err := Check(ok); err != nil {
		t.Fatal(err)
	}
	if err := Check(nil); err != nil {
		t.Fatal(err)
	}
	c, err := CapsOf(ok.Capabilities)
	if err != nil || c.Bounding != 1<<unix.CAP_CHOWN|1<<unix.CAP_NET_RAW || c.Effective != 0 {
		t.Errorf("CapsOf = %+v, %v", c, err)
	}
	for _, bad := range []struct {
		s    ramdisk.Security
		want string
	}{
		{ramdisk.Security{Capabilities: &ramdisk.Capabilities{Ambient: []string{"CAP_ROOT"}}}, "unknown capability"},
		{ramdisk.Security{MaskedPaths: []string{"proc/kcore"}}, "masked path"},
		{ramdisk.Security{ReadonlyPaths: []string{"/proc/../etc"}}, "readonly path"},
		{ramdisk.Security{Sysctls: map[string]string{"../../etc/passwd": "x"}}, "not a valid key"},
		{ramdisk.Security{Sysctls: map[string]string{"kernel..x": "x"}}, "not a valid key"},
		{ramdisk.Security{Seccomp: &specs.LinuxSeccomp{DefaultAction: specs.ActNotify}}, "seccomp profile"},
	} {
		if err := Check(&bad.s); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Check(%+v) = %v, want %q", bad.s, err, bad.want)
		}
	}
	if p, _ := SysctlPath("net.ipv4.ip_forward"); p != "/proc/sys/net/ipv4/ip_forward" {
		t.Errorf("SysctlPath = %s", p)
	}
}
