// Package seccomp holds the seccomp profile for Pods on enclave nodes
// (deny-vsock.json) and its tests; see docs/SECURITY.md.
package seccomp

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	cseccomp "github.com/containerd/containerd/contrib/seccomp"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite deny-vsock.json from containerd's RuntimeDefault profile")

// profileFile is the profile the chart ships (its node installer puts it
// into the kubelet's seccomp root).
const profileFile = "../helm/nitropod/files/seccomp/deny-vsock.json"

// removed are the syscalls the profile takes out of containerd's
// RuntimeDefault: socketcall (32-bit x86 programs create sockets through it,
// unfiltered by the socket(2) rule) and io_uring (IORING_OP_SOCKET creates
// sockets without any syscall seccomp could see).
var removed = []string{"socketcall", "io_uring_setup", "io_uring_enter", "io_uring_register"}

// defaultCaps is the capability set a container gets by default from
// containerd (and so from Kubernetes): the profile allows what
// RuntimeDefault allows with these.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// generate derives the profile from containerd's RuntimeDefault (the
// containerd module this repository builds with): the same rules, minus
// removed, with exactly one socket(2) rule, allowing every address family
// but AF_VSOCK.
func generate() (*specs.LinuxSeccomp, error) {
	if runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("the profile is generated for x86_64 nodes; this is %s", runtime.GOARCH)
	}
	sp := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: defaultCaps}}}
	p := cseccomp.DefaultProfile(sp)
	var out []specs.LinuxSyscall
	sockets := 0
	for _, r := range p.Syscalls {
		if slices.Contains(r.Names, "socket") {
			sockets++
			continue
		}
		r.Names = slices.DeleteFunc(slices.Clone(r.Names), func(n string) bool { return slices.Contains(removed, n) })
		if len(r.Names) > 0 {
			out = append(out, r)
		}
	}
	if sockets == 0 {
		return nil, fmt.Errorf("containerd's profile has no socket rule any more: check it before regenerating")
	}
	// One rule, one condition: runc turns several conditions on the same
	// argument into separate rules (an OR), so "!= A and != B" would not
	// hold; keep this single != rule.
	out = append(out, specs.LinuxSyscall{
		Names:  []string{"socket"},
		Action: specs.ActAllow,
		Args:   []specs.LinuxSeccompArg{{Index: 0, Value: unix.AF_VSOCK, Op: specs.OpNotEqual}},
	})
	p.Syscalls = out
	return p, nil
}

func marshal(p *specs.LinuxSeccomp) ([]byte, error) {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// TestProfileUpToDate: deny-vsock.json is what generate makes (run with
// -update to rewrite it after a containerd upgrade).
func TestProfileUpToDate(t *testing.T) {
	p, err := generate()
	if err != nil {
		t.Fatalf("generating the profile from containerd's RuntimeDefault: %v", err)
	}
	want, err := marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(profileFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(profileFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the profile derived from containerd's RuntimeDefault; run go test ./deploy/seccomp -run TestProfileUpToDate -update and review the diff", profileFile)
	}
}

func readProfile(t *testing.T) *specs.LinuxSeccomp {
	t.Helper()
	b, err := os.ReadFile(profileFile)
	if err != nil {
		t.Fatal(err)
	}
	var p specs.LinuxSeccomp
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("%s: %v", profileFile, err)
	}
	return &p
}

// TestProfileRules checks the rules that keep AF_VSOCK away, on the file
// as shipped.
func TestProfileRules(t *testing.T) {
	p := readProfile(t)
	if p.DefaultAction != specs.ActErrno {
		t.Errorf("default action %s, want SCMP_ACT_ERRNO", p.DefaultAction)
	}
	var socketRules []specs.LinuxSyscall
	for _, r := range p.Syscalls {
		for _, n := range r.Names {
			if slices.Contains(removed, n) && r.Action == specs.ActAllow {
				t.Errorf("%s is allowed", n)
			}
		}
		if slices.Contains(r.Names, "socket") {
			socketRules = append(socketRules, r)
		}
	}
	want := specs.LinuxSyscall{Names: []string{"socket"}, Action: specs.ActAllow,
		Args: []specs.LinuxSeccompArg{{Index: 0, Value: unix.AF_VSOCK, Op: specs.OpNotEqual}}}
	if len(socketRules) != 1 || !equalRule(socketRules[0], want) {
		t.Errorf("socket rules %+v, want exactly %+v", socketRules, want)
	}
}

func equalRule(a, b specs.LinuxSyscall) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// TestProfileInRunc runs a probe in a runc container under the profile and
// checks that it cannot open an AF_VSOCK socket (nor io_uring) but can open
// others; the same probe without the profile opens one, so the test can
// fail. Needs root, runc, and AF_VSOCK in this kernel.
func TestProfileInRunc(t *testing.T) {
	// Missing prerequisites fail under NITROPOD_REQUIRE_INTEGRATION (CI)
	// instead of skipping.
	testenv.Integration(t)
	testenv.RequireRoot(t)
	runc := testenv.Binary(t, "runc")
	if fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0); err != nil {
		testenv.Missing(t, "this kernel has no AF_VSOCK (%v): nothing to deny", err)
	} else {
		unix.Close(fd)
	}
	dir := t.TempDir()
	probe := filepath.Join(dir, "rootfs", "probe")
	build := exec.Command("go", "build", "-o", probe, "./testdata/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v\n%s", err, out)
	}
	profile := readProfile(t)

	withProfile := runProbe(t, runc, dir, "with", profile)
	for _, want := range []string{"socket-vsock EPERM", "socket-inet ok", "socket-unix ok", "io_uring_setup EPERM"} {
		if !slices.Contains(withProfile, want) {
			t.Errorf("under %s the probe printed %q, want %q", profileFile, withProfile, want)
		}
	}
	without := runProbe(t, runc, dir, "without", nil)
	if !slices.Contains(without, "socket-vsock ok") {
		t.Errorf("without a profile the probe printed %q, want socket-vsock ok (else this test proves nothing)", without)
	}
}

func runProbe(t *testing.T, runc, dir, name string, profile *specs.LinuxSeccomp) []string {
	t.Helper()
	bundle := filepath.Join(dir, name)
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: filepath.Join(dir, "rootfs"), Readonly: true},
		Process: &specs.Process{
			Args: []string{"/probe"}, Cwd: "/", Env: []string{"PATH=/"},
			Capabilities:    &specs.LinuxCapabilities{Bounding: defaultCaps, Effective: defaultCaps, Permitted: defaultCaps},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}},
			Seccomp:    profile,
		},
	}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := fmt.Sprintf("nitropod-seccomp-%s-%d", name, os.Getpid())
	root := filepath.Join(dir, "runc-state")
	cmd := exec.CommandContext(ctx, runc, "--root", root, "run", "--bundle", bundle, id)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	_ = exec.Command(runc, "--root", root, "delete", "--force", id).Run()
	if err != nil {
		t.Fatalf("runc run (%s the profile): %v\n%s%s", name, err, stdout.String(), stderr.String())
	}
	return strings.Split(strings.TrimSpace(stdout.String()), "\n")
}
