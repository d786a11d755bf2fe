package shim

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/internal/shimtest"
)

// TestParseCgroupsPath reads both drivers' cgroupsPath forms: the systemd
// form becomes the scope unit and the directory systemd gives it.
func TestParseCgroupsPath(t *testing.T) {
	long := strings.Repeat("a", 260)
	for _, tc := range []struct {
		in, path, slice, unit, err string
	}{
		{in: "/kubepods/burstable/pod1/c1", path: "/kubepods/burstable/pod1/c1"},
		{in: "/k8s.io/c1", path: "/k8s.io/c1"},
		{
			in:    "kubepods-besteffort-pod1234_5678.slice:cri-containerd:abc123",
			path:  "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_5678.slice/cri-containerd-abc123.scope",
			slice: "kubepods-besteffort-pod1234_5678.slice", unit: "cri-containerd-abc123.scope",
		},
		{in: "kubepods.slice:cri-containerd:x", path: "/kubepods.slice/cri-containerd-x.scope", slice: "kubepods.slice", unit: "cri-containerd-x.scope"},
		{in: ":cri-containerd:x", path: "/system.slice/cri-containerd-x.scope", slice: "system.slice", unit: "cri-containerd-x.scope"},
		{in: "-.slice::x", path: "/x.scope", slice: "-.slice", unit: "x.scope"},
		{in: "k8s.io/c1", err: "neither an absolute path"},
		{in: "", err: "neither an absolute path"},
		{in: "/a/../b", err: "not a clean absolute path"},
		{in: "/a/b/", err: "not a clean absolute path"},
		{in: "a.slice:p", err: "three parts"},
		{in: "a.slice:p:n:x", err: "three parts"},
		{in: "a.slice:p:", err: "needs a name"},
		{in: "a.slice:p:n.slice", err: "names a slice unit"},
		{in: "a.slice:p:../../etc", err: "does not allow"},
		{in: "a.slice:p/q:n", err: "does not allow"},
		{in: "a.scope:p:n", err: "not a slice unit name"},
		{in: ".slice:p:n", err: "not a slice unit name"},
		{in: "a--b.slice:p:n", err: "empty component"},
		{in: "a-.slice:p:n", err: "empty component"},
		{in: "a/b.slice:p:n", err: "does not allow"},
		{in: "a.slice:p:" + long, err: "longer than"},
	} {
		got, err := parseCgroupsPath(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseCgroupsPath(%q) = %+v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseCgroupsPath(%q): %v", tc.in, err)
			continue
		}
		if got.Path != tc.path || got.Slice != tc.slice || got.Unit != tc.unit {
			t.Errorf("parseCgroupsPath(%q) = %+v; want path %q slice %q unit %q", tc.in, got, tc.path, tc.slice, tc.unit)
		}
	}
}

// TestScopeProperties checks the transient scope systemd is asked for: in
// the Pod's slice, holding the launcher, with the launcher limits under
// the property names of the node's cgroup version.
func TestScopeProperties(t *testing.T) {
	ref, err := parseCgroupsPath("kubepods-burstable-pod1.slice:cri-containerd:c1")
	if err != nil {
		t.Fatal(err)
	}
	limit, quota, period, shares := int64(128<<20), int64(150000), uint64(100000), uint64(512)
	res := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &limit},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period, Shares: &shares},
		Pids:   &specs.LinuxPids{Limit: 64},
	}
	props := func(v2 bool) map[string]any {
		m := map[string]any{}
		for _, p := range scopeProperties(ref, 4242, res, v2) {
			m[p.Name] = p.Value.Value()
		}
		return m
	}
	common := map[string]any{
		"Slice": "kubepods-burstable-pod1.slice", "PIDs": []uint32{4242}, "Delegate": true,
		"DefaultDependencies": false, "CPUQuotaPerSecUSec": uint64(1_500_000), "TasksMax": uint64(64),
		"MemoryAccounting": true, "CPUAccounting": true, "TasksAccounting": true,
	}
	for _, v := range []struct {
		v2   bool
		want map[string]any
	}{
		{false, map[string]any{"MemoryLimit": uint64(128 << 20), "CPUShares": uint64(512), "BlockIOAccounting": true}},
		{true, map[string]any{"MemoryMax": uint64(128 << 20), "CPUWeight": uint64(20), "IOAccounting": true}},
	} {
		got := props(v.v2)
		for _, want := range []map[string]any{common, v.want} {
			for k, w := range want {
				if g, ok := got[k]; !ok || !equalValue(g, w) {
					t.Errorf("v2=%v: property %s = %#v, want %#v", v.v2, k, g, w)
				}
			}
		}
		for _, other := range []string{"MemoryLimit", "MemoryMax", "CPUShares", "CPUWeight"} {
			if _, ok := v.want[other]; !ok {
				if _, ok := got[other]; ok {
					t.Errorf("v2=%v: property %s set, belongs to the other cgroup version", v.v2, other)
				}
			}
		}
	}
	// systemd keeps the quota in 10 ms per second steps: 0.333 CPU is
	// rounded up to 340 ms, never down below the cgroup file's value.
	q := int64(33300)
	res = &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &q, Period: &period}}
	for _, p := range scopeProperties(ref, 1, res, true) {
		if p.Name == "CPUQuotaPerSecUSec" && p.Value.Value() != uint64(340_000) {
			t.Errorf("CPUQuotaPerSecUSec for 33300/100000 = %v, want 340000", p.Value.Value())
		}
	}
	if w := sharesToWeight(1024); w != 39 {
		t.Errorf("sharesToWeight(1024) = %d, want 39", w)
	}
	if w := sharesToWeight(2); w != 1 {
		t.Errorf("sharesToWeight(2) = %d, want 1", w)
	}
}

func equalValue(a, b any) bool {
	as, aok := a.([]uint32)
	bs, bok := b.([]uint32)
	if aok && bok {
		return len(as) == len(bs) && (len(as) == 0 || as[0] == bs[0])
	}
	return a == b
}

// TestSystemdScope creates a real scope through systemd's D-Bus API with a
// process in it, on a machine booted with systemd. Where PID 1 is not
// systemd (the CI machine) there is no systemd to talk to and the test is
// skipped: the D-Bus path is untested there, nothing stands in for it.
func TestSystemdScope(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Skip("not booted with systemd (no /run/systemd/system): the systemd driver's D-Bus path cannot run here")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	h := nodeCgroups()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() }()
	path := "nitropodtest.slice:nitropod-test:" + strings.ReplaceAll(t.Name(), "/", "_")
	ref, _ := parseCgroupsPath(path)
	limit := int64(64 << 20)
	res := &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
	limits := h.hasController("memory")
	if !limits {
		// A v2 hierarchy without controllers (hack/systemd-sandbox.sh
		// --unified on a cgroup v1 machine): placement only.
		t.Log("no memory controller: the scope is made without limits")
		res = &specs.LinuxResources{}
	}
	if err := h.create(path, res, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/cgroup")
	if !strings.Contains(string(b), ref.Path+"\n") {
		t.Errorf("process cgroups %q do not name the scope's %s", b, ref.Path)
	}
	conn, err := systemdConn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if st, err := conn.ListUnitsByNamesContext(t.Context(), []string{ref.Unit}); err != nil || len(st) != 1 || st[0].ActiveState != "active" {
		t.Errorf("unit %s: %+v, %v; want active", ref.Unit, st, err)
	}
	cgfs := shimtest.NodeCgroupfs()
	t.Logf("cgroup directories of the scope: %v", cgfs.Dirs(ref.Path))
	if m, err := cgfs.MemoryLimit(ref.Path); limits && (err != nil || m != limit) {
		t.Errorf("memory limit of the scope = %d, %v; want %d", m, err, limit)
	}
	if !cgfs.HasProc(ref.Path, cmd.Process.Pid) {
		t.Errorf("process %d not in every hierarchy of the scope", cmd.Process.Pid)
	}
	if limits {
		// An update reaches the unit (systemd keeps it) and the file.
		limit2 := int64(96 << 20)
		if err := h.update(path, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit2}}); err != nil {
			t.Fatalf("update: %v", err)
		}
		prop := "MemoryLimit"
		if h.V2 {
			prop = "MemoryMax"
		}
		out, _ := exec.Command("systemctl", "show", "-p", prop, "--value", ref.Unit).Output()
		if got := strings.TrimSpace(string(out)); got != strconv.FormatInt(limit2, 10) {
			t.Errorf("the scope's %s after update = %q, want %d", prop, got, limit2)
		}
		if m, err := cgfs.MemoryLimit(ref.Path); err != nil || m != limit2 {
			t.Errorf("memory limit after update = %d, %v; want %d", m, err, limit2)
		}
	}
	if err := h.removeAll(path); err != nil {
		t.Fatal(err)
	}
	if st, _ := conn.ListUnitsByNamesContext(t.Context(), []string{ref.Unit}); len(st) == 1 && st[0].ActiveState == "active" {
		t.Errorf("unit %s still active after removal", ref.Unit)
	}
	if d := cgfs.Dirs(ref.Path); len(d) != 0 {
		t.Errorf("cgroup directories left after removal: %v", d)
	}
}

// TestRuncOptionsForSystemd: the Pod sandbox handed to runc gets runc's
// systemd driver when its cgroupsPath is in the systemd form, with the
// runtime's own runc options kept; a cgroupfs path changes nothing.
func TestRuncOptionsForSystemd(t *testing.T) {
	spec := func(p string) *specs.Spec { return &specs.Spec{Linux: &specs.Linux{CgroupsPath: p}} }
	anyOf := func(v any) *ptypes.Any {
		a, err := protobuf.MarshalAnyToProto(v)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	read := func(a *ptypes.Any) *options.Options {
		t.Helper()
		if a == nil {
			return nil
		}
		v, err := typeurl.UnmarshalAny(a)
		if err != nil {
			t.Fatal(err)
		}
		o, ok := v.(*options.Options)
		if !ok {
			t.Fatalf("options of type %T, want runc's", v)
		}
		return o
	}
	const sd = "kubepods-besteffort-pod1.slice:cri-containerd:abc"
	for _, tc := range []struct {
		name        string
		in          *ptypes.Any
		path        string
		wantNil     bool
		wantSystemd bool
		wantBinary  string
	}{
		{name: "no options, systemd", path: sd, wantSystemd: true},
		{name: "CRI runtimeoptions, systemd", in: anyOf(&runtimeoptions.Options{ConfigPath: "/etc/nitropod/shim.toml"}), path: sd, wantSystemd: true},
		{name: "runc options kept, systemd", in: anyOf(&options.Options{BinaryName: "/usr/bin/runc"}), path: sd, wantSystemd: true, wantBinary: "/usr/bin/runc"},
		{name: "CRI runtimeoptions, cgroupfs", in: anyOf(&runtimeoptions.Options{ConfigPath: "/x"}), path: "/kubepods/besteffort/pod1/abc", wantNil: true},
		{name: "runc options, cgroupfs", in: anyOf(&options.Options{BinaryName: "/usr/bin/runc"}), path: "/kubepods/pod1/abc", wantBinary: "/usr/bin/runc"},
	} {
		out, err := runcOptionsFor(tc.in, spec(tc.path))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		o := read(out)
		if tc.wantNil {
			if o != nil {
				t.Errorf("%s: options %+v, want none", tc.name, o)
			}
			continue
		}
		if o == nil {
			t.Errorf("%s: no options", tc.name)
			continue
		}
		if o.SystemdCgroup != tc.wantSystemd || o.BinaryName != tc.wantBinary {
			t.Errorf("%s: SystemdCgroup %v BinaryName %q; want %v %q", tc.name, o.SystemdCgroup, o.BinaryName, tc.wantSystemd, tc.wantBinary)
		}
	}
}
