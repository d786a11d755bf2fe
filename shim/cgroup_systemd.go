package shim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/typeurl/v2"
	systemd "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The systemd cgroup driver (containerd's SystemdCgroup = true, kubelet's
// cgroupDriver: systemd) gives a container's cgroupsPath as
// "slice:prefix:name", e.g.
// "kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>". As runc does,
// the container gets a transient systemd scope unit "prefix-name.scope" in
// that slice, created through systemd's D-Bus API with the launcher's pid;
// systemd makes its cgroup at <slice path>/<unit>, where a slice name's
// dashes are its parents ("a-b.slice" lives in "a.slice/a-b.slice"). The
// limits are set both as unit properties (so that systemd keeps them) and
// in the cgroup files, and every other operation (stats, kill, update)
// works on that cgroup directory.

// cgroupRef is a parsed cgroupsPath.
type cgroupRef struct {
	// Path is the cgroup's directory below the hierarchy root, absolute.
	Path string
	// Slice and Unit are set for the systemd form: the parent slice unit
	// and the container's scope unit.
	Slice, Unit string
}

func (r cgroupRef) systemd() bool { return r.Unit != "" }

// maxUnitName is systemd's limit on a unit name (UNIT_NAME_MAX - 1).
const maxUnitName = 255

// parseCgroupsPath reads a cgroupsPath in either driver's form: an absolute
// path (cgroupfs) or "slice:prefix:name" (systemd).
func parseCgroupsPath(p string) (cgroupRef, error) {
	if !strings.Contains(p, ":") {
		if !strings.HasPrefix(p, "/") {
			return cgroupRef{}, fmt.Errorf("cgroupsPath %q is neither an absolute path (cgroupfs driver) nor slice:prefix:name (systemd driver)", p)
		}
		if path.Clean(p) != p {
			return cgroupRef{}, fmt.Errorf("cgroupsPath %q is not a clean absolute path", p)
		}
		return cgroupRef{Path: p}, nil
	}
	parts := strings.Split(p, ":")
	if len(parts) != 3 {
		return cgroupRef{}, fmt.Errorf("cgroupsPath %q: the systemd driver form is slice:prefix:name (three parts separated by ':')", p)
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice" // runc's default
	}
	dir, err := expandSlice(slice)
	if err != nil {
		return cgroupRef{}, fmt.Errorf("cgroupsPath %q: %w", p, err)
	}
	if name == "" {
		return cgroupRef{}, fmt.Errorf("cgroupsPath %q: the systemd driver form needs a name (slice:prefix:name)", p)
	}
	if strings.HasSuffix(name, ".slice") {
		return cgroupRef{}, fmt.Errorf("cgroupsPath %q names a slice unit; an enclave container needs a scope (slice:prefix:name with a name not ending in .slice)", p)
	}
	unit := name + ".scope"
	if prefix != "" {
		unit = prefix + "-" + unit
	}
	if err := checkUnitChars(unit); err != nil {
		return cgroupRef{}, fmt.Errorf("cgroupsPath %q: %w", p, err)
	}
	if dir == "/" {
		return cgroupRef{Path: "/" + unit, Slice: slice, Unit: unit}, nil
	}
	return cgroupRef{Path: dir + "/" + unit, Slice: slice, Unit: unit}, nil
}

// checkUnitChars accepts the characters systemd allows in a unit name
// (letters, digits, ":-_.\@"), without ':' (the separator of the form) and
// '\' (escapes), at most maxUnitName long.
func checkUnitChars(u string) error {
	if len(u) > maxUnitName {
		return fmt.Errorf("unit name %.40q… is longer than systemd's %d characters", u, maxUnitName)
	}
	for _, c := range []byte(u) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == '@':
		default:
			return fmt.Errorf("unit name %q has the character %q, which systemd does not allow", u, c)
		}
	}
	return nil
}

// expandSlice turns a slice unit name into its cgroup directory:
// "a-b-c.slice" is "/a.slice/a-b.slice/a-b-c.slice", "-.slice" the root.
func expandSlice(slice string) (string, error) {
	if err := checkUnitChars(slice); err != nil {
		return "", err
	}
	base, ok := strings.CutSuffix(slice, ".slice")
	if !ok || base == "" {
		return "", fmt.Errorf("slice %q is not a slice unit name (such as kubepods.slice)", slice)
	}
	if base == "-" {
		return "/", nil
	}
	var b strings.Builder
	prefix := ""
	for _, comp := range strings.Split(base, "-") {
		if comp == "" {
			return "", fmt.Errorf("slice %q has an empty component between dashes", slice)
		}
		b.WriteString("/" + prefix + comp + ".slice")
		prefix += comp + "-"
	}
	return b.String(), nil
}

// scopeProperties are the transient scope's properties: in slice, holding
// pid, with the launcher limits (v2 property names on a v2 host, v1's
// otherwise), delegated like runc's scopes.
func scopeProperties(ref cgroupRef, pid int, res *specs.LinuxResources, v2 bool) []systemd.Property {
	prop := func(name string, v any) systemd.Property {
		return systemd.Property{Name: name, Value: dbus.MakeVariant(v)}
	}
	props := []systemd.Property{
		systemd.PropDescription("nitropod enclave container " + ref.Unit),
		systemd.PropSlice(ref.Slice),
		prop("PIDs", []uint32{uint32(pid)}),
		prop("Delegate", true),
		prop("DefaultDependencies", false),
		prop("MemoryAccounting", true),
		prop("CPUAccounting", true),
		prop("TasksAccounting", true),
	}
	if v2 {
		props = append(props, prop("IOAccounting", true))
	} else {
		props = append(props, prop("BlockIOAccounting", true))
	}
	return append(props, limitProperties(res, v2)...)
}

// limitProperties are the unit properties of the launcher limits res.
func limitProperties(res *specs.LinuxResources, v2 bool) []systemd.Property {
	prop := func(name string, v any) systemd.Property {
		return systemd.Property{Name: name, Value: dbus.MakeVariant(v)}
	}
	var props []systemd.Property
	if res == nil {
		return props
	}
	if m := res.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		if v2 {
			props = append(props, prop("MemoryMax", uint64(*m.Limit)))
		} else {
			props = append(props, prop("MemoryLimit", uint64(*m.Limit)))
		}
	}
	if c := res.CPU; c != nil {
		if c.Shares != nil && *c.Shares > 0 {
			if v2 {
				props = append(props, prop("CPUWeight", sharesToWeight(*c.Shares)))
			} else {
				props = append(props, prop("CPUShares", *c.Shares))
			}
		}
		if c.Quota != nil && *c.Quota > 0 && c.Period != nil && *c.Period > 0 {
			// systemd keeps the quota per second in 10 ms steps: round up
			// so that the cgroup file written afterwards is not above it.
			perSec := uint64(*c.Quota) * 1_000_000 / *c.Period
			if perSec%10_000 != 0 {
				perSec = (perSec/10_000 + 1) * 10_000
			}
			props = append(props, prop("CPUQuotaPerSecUSec", perSec))
		} else if c.Quota != nil && *c.Quota < 0 {
			props = append(props, prop("CPUQuotaPerSecUSec", uint64(math.MaxUint64)))
		}
	}
	if p := res.Pids; p != nil && p.Limit > 0 {
		props = append(props, prop("TasksMax", uint64(p.Limit)))
	}
	return props
}

// sharesToWeight is the cgroup v1 cpu.shares to v2 cpu.weight conversion
// runc and the kernel documentation use.
func sharesToWeight(shares uint64) uint64 {
	if shares == 0 {
		return 0
	}
	shares = min(max(shares, 2), 262144)
	return 1 + ((shares-2)*9999)/262142
}

// systemdTimeout bounds one D-Bus job (runc waits as long).
const systemdTimeout = 30 * time.Second

// systemdConn connects to systemd: its private socket first (root, no bus
// daemon needed), then the system bus.
func systemdConn(ctx context.Context) (*systemd.Conn, error) {
	c, err := systemd.NewSystemdConnectionContext(ctx)
	if err == nil {
		return c, nil
	}
	c, err2 := systemd.NewSystemConnectionContext(ctx)
	if err2 != nil {
		return nil, fmt.Errorf("connecting to systemd (needed for the systemd cgroup driver): %w", errors.Join(err, err2))
	}
	return c, nil
}

// startScope creates the container's transient scope holding pid.
func startScope(ref cgroupRef, pid int, res *specs.LinuxResources, v2 bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), systemdTimeout)
	defer cancel()
	conn, err := systemdConn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan string, 1)
	if _, err := conn.StartTransientUnitContext(ctx, ref.Unit, "replace", scopeProperties(ref, pid, res, v2), done); err != nil {
		var de dbus.Error
		if errors.As(err, &de) && de.Name == "org.freedesktop.systemd1.UnitExists" {
			return fmt.Errorf("systemd unit %s already exists: is another container using cgroupsPath %s:…:%s?", ref.Unit, ref.Slice, ref.Unit)
		}
		return fmt.Errorf("creating systemd scope %s in %s: %w", ref.Unit, ref.Slice, err)
	}
	select {
	case r := <-done:
		if r != "done" {
			return fmt.Errorf("creating systemd scope %s in %s: job %s", ref.Unit, ref.Slice, r)
		}
	case <-ctx.Done():
		return fmt.Errorf("creating systemd scope %s: no answer from systemd in %v", ref.Unit, systemdTimeout)
	}
	return nil
}

// stopScope stops the container's scope; a unit already gone (systemd
// collects an empty scope) is not an error.
func stopScope(ref cgroupRef) error {
	ctx, cancel := context.WithTimeout(context.Background(), systemdTimeout)
	defer cancel()
	conn, err := systemdConn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan string, 1)
	if _, err := conn.StopUnitContext(ctx, ref.Unit, "replace", done); err != nil {
		var de dbus.Error
		if errors.As(err, &de) && de.Name == "org.freedesktop.systemd1.NoSuchUnit" {
			return nil
		}
		return fmt.Errorf("stopping systemd scope %s: %w", ref.Unit, err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("stopping systemd scope %s: no answer from systemd in %v", ref.Unit, systemdTimeout)
	}
	return nil
}

// runcOptionsFor is what runc's shim gets for a container the nitro shim
// hands to it (the Pod sandbox): runc's own options from the runtime
// config (runcOptions), with SystemdCgroup set when the container's
// cgroupsPath is in the systemd form. CRI sends that form whenever kubelet
// uses the systemd driver (its cgroup parent is a .slice), whatever the
// runtime's options say, and runc reads it only with its systemd driver.
func runcOptionsFor(opts *ptypes.Any, spec *specs.Spec) (*ptypes.Any, error) {
	out := runcOptions(opts)
	if spec == nil || spec.Linux == nil || !strings.Contains(spec.Linux.CgroupsPath, ":") {
		return out, nil
	}
	o := &options.Options{}
	if out != nil {
		v, err := typeurl.UnmarshalAny(out)
		if err != nil {
			return nil, fmt.Errorf("reading runc options: %w", err)
		}
		if ro, ok := v.(*options.Options); ok {
			if ro.SystemdCgroup {
				return out, nil
			}
			o = ro
		}
	}
	o.SystemdCgroup = true
	a, err := protobuf.MarshalAnyToProto(o)
	if err != nil {
		return nil, fmt.Errorf("writing runc options: %w", err)
	}
	return a, nil
}

// setScopeLimits sets the launcher limits res on the container's scope (an
// update), so that systemd keeps them when it rewrites the unit's cgroup.
func setScopeLimits(ref cgroupRef, res *specs.LinuxResources, v2 bool) error {
	props := limitProperties(res, v2)
	if len(props) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), systemdTimeout)
	defer cancel()
	conn, err := systemdConn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetUnitPropertiesContext(ctx, ref.Unit, true, props...); err != nil {
		return fmt.Errorf("setting the limits of systemd scope %s: %w", ref.Unit, err)
	}
	return nil
}
