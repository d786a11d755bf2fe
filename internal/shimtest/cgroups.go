package shimtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Cgroupfs reads cgroups the same way on cgroup v1 and v2, for test
// assertions: a cgroup is named by its path below the hierarchy root
// ("/k8s.io/c1", "/nitropod/k8s.io/c1"), as in a cgroupfs-driver
// cgroupsPath.
type Cgroupfs struct {
	// Root is where cgroupfs is mounted (/sys/fs/cgroup).
	Root string
	// V2 says Root is the unified hierarchy itself; otherwise Root holds
	// one v1 hierarchy per directory (a cgroup2 mount among them, the
	// hybrid layout, is skipped: its controllers are all on v1).
	V2 bool
}

// NodeCgroupfs is this machine's /sys/fs/cgroup.
func NodeCgroupfs() Cgroupfs {
	c := Cgroupfs{Root: "/sys/fs/cgroup"}
	var st unix.Statfs_t
	if unix.Statfs(c.Root, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		c.V2 = true
	}
	return c
}

// Dirs are the directories of cgroup path that exist: one on v2, one per
// v1 hierarchy that has it.
func (c Cgroupfs) Dirs(path string) []string {
	if c.V2 {
		d := filepath.Join(c.Root, path)
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			return []string{d}
		}
		return nil
	}
	var out []string
	for _, h := range c.v1Hierarchies() {
		d := filepath.Join(h, path)
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			out = append(out, d)
		}
	}
	return out
}

// Glob lists the cgroups (paths below the root, each once) matching
// pattern, such as "/nitropod/k8s.io/*", in any hierarchy.
func (c Cgroupfs) Glob(pattern string) []string {
	roots := []string{c.Root}
	if !c.V2 {
		roots = c.v1Hierarchies()
	}
	seen := map[string]bool{}
	for _, r := range roots {
		m, _ := filepath.Glob(filepath.Join(r, pattern))
		for _, d := range m {
			if fi, err := os.Stat(d); err == nil && fi.IsDir() {
				seen[strings.TrimPrefix(d, r)] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

func (c Cgroupfs) v1Hierarchies() []string {
	des, _ := os.ReadDir(c.Root)
	seen := map[string]bool{}
	var out []string
	for _, de := range des {
		h, err := filepath.EvalSymlinks(filepath.Join(c.Root, de.Name()))
		if err != nil || seen[h] {
			continue
		}
		seen[h] = true
		var st unix.Statfs_t
		if unix.Statfs(h, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			continue
		}
		if fi, err := os.Stat(h); err == nil && fi.IsDir() {
			out = append(out, h)
		}
	}
	return out
}

// HasController says whether controller (such as "memory") can be used:
// listed in the v2 root's cgroup.controllers (a v2 hierarchy on a machine
// whose controllers are bound to v1 lists none), or a mounted v1
// hierarchy.
func (c Cgroupfs) HasController(controller string) bool {
	if c.V2 {
		b, err := os.ReadFile(filepath.Join(c.Root, "cgroup.controllers"))
		if err != nil {
			return false
		}
		for _, f := range strings.Fields(string(b)) {
			if f == controller {
				return true
			}
		}
		return false
	}
	var st unix.Statfs_t
	return unix.Statfs(filepath.Join(c.Root, controller), &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC
}

// controllerDir is the directory of path in the hierarchy of controller
// (v1), or the cgroup's only directory (v2).
func (c Cgroupfs) controllerDir(path, controller string) string {
	if c.V2 {
		return filepath.Join(c.Root, path)
	}
	return filepath.Join(c.Root, controller, path)
}

// Procs are the processes in cgroup path (not its descendants), from
// every directory it has.
func (c Cgroupfs) Procs(path string) ([]int, error) {
	dirs := c.Dirs(path)
	if len(dirs) == 0 {
		return nil, fmt.Errorf("cgroup %s: %w", path, os.ErrNotExist)
	}
	seen := map[int]bool{}
	var out []int
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // a named v1 hierarchy without procs
			}
			return nil, err
		}
		for _, f := range strings.Fields(string(b)) {
			p, err := strconv.Atoi(f)
			if err == nil && !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	sort.Ints(out)
	return out, nil
}

// HasProc says whether pid is in cgroup path: on v1, in its directory of
// every hierarchy that has one (memory and cpu at least).
func (c Cgroupfs) HasProc(path string, pid int) bool {
	dirs := c.Dirs(path)
	if len(dirs) == 0 {
		return false
	}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil || !strings.Contains("\n"+string(b), "\n"+strconv.Itoa(pid)+"\n") {
			return false
		}
	}
	return true
}

// MemoryLimit is the cgroup's memory limit in bytes (v1
// memory.limit_in_bytes, v2 memory.max); -1 for none.
func (c Cgroupfs) MemoryLimit(path string) (int64, error) {
	file := "memory.limit_in_bytes"
	if c.V2 {
		file = "memory.max"
	}
	b, err := os.ReadFile(filepath.Join(c.controllerDir(path, "memory"), file))
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return -1, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s of %s: %q: %w", file, path, s, err)
	}
	if !c.V2 && v >= 1<<62 { // v1's "unlimited" is a page-rounded huge value
		return -1, nil
	}
	return v, nil
}

// CPUQuota is the cgroup's CPU quota and period in microseconds (v1
// cpu.cfs_quota_us and cpu.cfs_period_us, v2 cpu.max); quota -1 for none.
func (c Cgroupfs) CPUQuota(path string) (quota, period int64, err error) {
	dir := c.controllerDir(path, "cpu")
	read := func(f string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, f))
		return strings.TrimSpace(string(b)), err
	}
	var q, p string
	if c.V2 {
		s, err := read("cpu.max")
		if err != nil {
			return 0, 0, err
		}
		var ok bool
		if q, p, ok = strings.Cut(s, " "); !ok {
			return 0, 0, fmt.Errorf("cpu.max of %s: %q is not \"quota period\"", path, s)
		}
	} else {
		if q, err = read("cpu.cfs_quota_us"); err != nil {
			return 0, 0, err
		}
		if p, err = read("cpu.cfs_period_us"); err != nil {
			return 0, 0, err
		}
	}
	if period, err = strconv.ParseInt(p, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("cpu period of %s: %q: %w", path, p, err)
	}
	if q == "max" {
		return -1, period, nil
	}
	if quota, err = strconv.ParseInt(q, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("cpu quota of %s: %q: %w", path, q, err)
	}
	return quota, period, nil
}

// V2Hierarchy returns the mount point of a real cgroup v2 hierarchy for a
// test: /sys/fs/cgroup on a v2 host, the hybrid layout's
// /sys/fs/cgroup/unified, or a cgroup2 mount the test makes (root only;
// removed at cleanup). On a v1 host its controllers are bound to v1, so it
// has none: cgroup creation, cgroup.procs, cgroup.kill and
// CLONE_INTO_CGROUP are real, limits are not. It skips the test when no v2
// hierarchy can be had.
func V2Hierarchy(t testing.TB) string {
	t.Helper()
	isV2 := func(p string) bool {
		var st unix.Statfs_t
		return unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
	}
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if isV2(p) {
			return p
		}
	}
	dir := t.TempDir()
	if err := unix.Mount("none", dir, "cgroup2", 0, ""); err != nil {
		t.Skipf("no cgroup v2 hierarchy here and mounting one failed: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
