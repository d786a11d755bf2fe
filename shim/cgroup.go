package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/internal/safefile"
)

// The launcher is placed in the container's own cgroup (linux.cgroupsPath),
// created with the container's cpu/memory limits: those are the launcher
// limits the webhook set from nitro.k8s.anjuna.io/launcherCPU/Memory.
// Both cgroup drivers are supported: cgroupfs (an absolute path, made
// directly in cgroupfs) and systemd ("slice:prefix:name", a transient scope
// made through systemd, see cgroup_systemd.go); and both cgroup versions:
// v1 (and hybrid, where the controllers are on v1) and v2 (unified).

// cgroupHost is the cgroup layout of the node: where cgroupfs is mounted
// and whether it is the unified (v2) hierarchy. Tests point it at a v2
// hierarchy of their own (a real mount) or at a fake tree.
type cgroupHost struct {
	Root string
	V2   bool
	// NoSystemd makes the systemd form fail instead of calling systemd
	// (tests on fake trees).
	NoSystemd bool
}

// defaultCgroupRoot is where the node's cgroupfs is mounted.
const defaultCgroupRoot = "/sys/fs/cgroup"

// nodeCgroups is the node's layout: v2 when /sys/fs/cgroup itself is a
// cgroup2 mount; v1 (with a possible v2 mount beside, the hybrid layout,
// whose controllers are all on v1) otherwise.
func nodeCgroups() cgroupHost {
	return cgroupHost{Root: defaultCgroupRoot, V2: cgroups.Mode() == cgroups.Unified}
}

// mountedV1 is the cgroup v1 library's default hierarchy list without the
// entries whose directory under the root is not a mounted cgroup v1
// hierarchy: a systemd that could not mount a controller (in a container,
// cpu,cpuacct when the host mounts them apart) leaves an empty directory
// there, on a read-only tmpfs, where the library would try to create the
// cgroup and fail.
var mountedV1 = cgroup1.WithHiearchy(func() ([]cgroup1.Subsystem, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, s := range all {
		p, ok := s.(interface{ Path(string) string })
		if !ok {
			out = append(out, s)
			continue
		}
		var st unix.Statfs_t
		if unix.Statfs(p.Path("/"), &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC {
			out = append(out, s)
		}
	}
	return out, nil
})

// launcherResources keeps the limits that apply to the launcher: cpu,
// memory and pids. The spec's device rules are for a container's own /dev
// and would stop the launcher and QEMU from opening /dev/null or /dev/kvm.
func launcherResources(res *specs.LinuxResources) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if res == nil {
		return out
	}
	// An empty section sets nothing: leaving it out keeps its controller
	// from being enabled for nothing (a v2 hierarchy may lack it).
	if c := res.CPU; c != nil && (nonZero(c.Shares) || nonZero(c.Quota) || nonZero(c.Period) ||
		nonZero(c.RealtimeRuntime) || nonZero(c.RealtimePeriod) || c.Cpus != "" || c.Mems != "" || c.Idle != nil) {
		out.CPU = c
	}
	if m := res.Memory; m != nil && (m.Limit != nil || m.Reservation != nil || m.Swap != nil) {
		out.Memory = m
	}
	if p := res.Pids; p != nil && p.Limit != 0 {
		out.Pids = p
	}
	return out
}

func nonZero[T int64 | uint64](p *T) bool { return p != nil && *p != 0 }

// createCgroup creates the cgroup with the launcher limits and moves pid
// into it.
func createCgroup(path string, res *specs.LinuxResources, pid int) error {
	return nodeCgroups().create(path, res, pid)
}

func (h cgroupHost) create(path string, res *specs.LinuxResources, pid int) error {
	ref, err := parseCgroupsPath(path)
	if err != nil {
		return err
	}
	res = launcherResources(res)
	if ref.systemd() {
		// systemd creates the scope's cgroup (every hierarchy it manages
		// on v1) with pid in it; the library below then makes what systemd
		// does not (v1 controllers outside systemd's) and writes the limits
		// into the files, as runc's systemd driver does.
		if h.NoSystemd {
			return fmt.Errorf("cgroupsPath %q: the systemd driver is not available here", path)
		}
		if err := startScope(ref, pid, res, h.V2); err != nil {
			return err
		}
	}
	if h.V2 {
		m, err := cgroupsv2.NewManager(h.Root, ref.Path, cgroupsv2.ToResources(res))
		if err != nil {
			return fmt.Errorf("creating cgroup %s: %w", ref.Path, err)
		}
		if err := m.AddProc(uint64(pid)); err != nil {
			return fmt.Errorf("moving launcher into cgroup %s: %w", ref.Path, err)
		}
		return nil
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(ref.Path), res, mountedV1)
	if err != nil {
		return fmt.Errorf("creating cgroup %s: %w", ref.Path, err)
	}
	if err := cg.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("moving launcher into cgroup %s: %w", ref.Path, err)
	}
	return nil
}

func updateCgroup(path string, res *specs.LinuxResources) error {
	return nodeCgroups().update(path, res)
}

func (h cgroupHost) update(path string, res *specs.LinuxResources) error {
	if res == nil {
		return nil
	}
	ref, err := parseCgroupsPath(path)
	if err != nil {
		return err
	}
	res = launcherResources(res)
	if ref.systemd() && !h.NoSystemd {
		if err := setScopeLimits(ref, res, h.V2); err != nil {
			return err
		}
	}
	if h.V2 {
		m, err := h.loadV2(ref.Path)
		if err != nil {
			return err
		}
		return m.Update(cgroupsv2.ToResources(res))
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(ref.Path), mountedV1)
	if err != nil {
		return err
	}
	return cg.Update(res)
}

func (h cgroupHost) loadV2(p string) (*cgroupsv2.Manager, error) {
	if _, err := os.Stat(filepath.Join(h.Root, p)); err != nil {
		return nil, err
	}
	return cgroupsv2.Load(p, cgroupsv2.WithMountpoint(h.Root))
}

// cgroupStats returns metrics in the form CRI converts (cgroup v1 or v2
// Metrics).
func cgroupStats(path string) (any, error) {
	return nodeCgroups().stats(path)
}

func (h cgroupHost) stats(path string) (any, error) {
	ref, err := parseCgroupsPath(path)
	if err != nil {
		return nil, err
	}
	if h.V2 {
		m, err := h.loadV2(ref.Path)
		if err != nil {
			return nil, err
		}
		return m.Stat()
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(ref.Path), mountedV1)
	if err != nil {
		return nil, err
	}
	return cg.Stat(cgroup1.IgnoreNotExist)
}

func cgroupPids(path string) ([]int, error) {
	return nodeCgroups().pids(path)
}

func (h cgroupHost) pids(path string) ([]int, error) {
	ref, err := parseCgroupsPath(path)
	if err != nil {
		return nil, err
	}
	if h.V2 {
		m, err := h.loadV2(ref.Path)
		if err != nil {
			return nil, err
		}
		ps, err := m.Procs(true)
		out := make([]int, 0, len(ps))
		for _, p := range ps {
			out = append(out, int(p))
		}
		return out, err
	}
	return v1Procs(ref.Path)
}

// v1Procs lists the processes in cgroup path and its descendants, in every
// mounted v1 hierarchy that has it. A hierarchy whose directory is gone is
// skipped: with the systemd driver, systemd removes the scope's cgroup in
// the hierarchies it manages as soon as the scope is empty, while the
// others remain for a moment. ErrNotExist when no hierarchy has it.
func v1Procs(path string) ([]int, error) {
	subs, err := cgroup1.Default()
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	found := false
	for _, s := range subs {
		p, ok := s.(interface{ Path(string) string })
		if !ok {
			continue
		}
		var st unix.Statfs_t
		if unix.Statfs(p.Path("/"), &st) != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			continue
		}
		err := filepath.WalkDir(p.Path(path), func(dir string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			if err != nil {
				return err
			}
			found = true
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					seen[pid] = true
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("listing the processes of cgroup %s: %w", path, err)
		}
	}
	if !found {
		return nil, fmt.Errorf("cgroup %s: %w", path, os.ErrNotExist)
	}
	out := make([]int, 0, len(seen))
	for pid := range seen {
		out = append(out, pid)
	}
	return out, nil
}

// killCgroup SIGKILLs every process in the cgroup, a few rounds in case a
// process was forking.
func killCgroup(path string) error {
	return nodeCgroups().kill(path)
}

func (h cgroupHost) kill(path string) error {
	if h.V2 {
		// cgroup.kill (Linux 5.14) kills the whole subtree at once, forks
		// included; the loop below checks and covers older kernels.
		if ref, err := parseCgroupsPath(path); err == nil {
			_ = os.WriteFile(filepath.Join(h.Root, ref.Path, "cgroup.kill"), []byte("1"), 0)
		}
	}
	for range 10 {
		pids, err := h.pids(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, cgroup1.ErrCgroupDeleted) {
				return nil
			}
			return err
		}
		n := 0
		for _, p := range pids {
			// cgroup.procs shows a process outside the reader's PID
			// namespace as 0, and kill(0) would kill the shim's own
			// process group: only real pids, never the shim itself.
			if p <= 1 || p == os.Getpid() {
				continue
			}
			_ = unix.Kill(p, unix.SIGKILL)
			n++
		}
		if n == 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("processes still in cgroup %s after SIGKILL", path)
}

// signalCgroup sends SIGKILL once to every process in the cgroup and
// returns without waiting for them to go (a Kill request: the exit comes
// through the reaper; delete waits and removes, see killCgroup).
func signalCgroup(path string) error {
	return nodeCgroups().signal(path)
}

func (h cgroupHost) signal(path string) error {
	if h.V2 {
		if ref, err := parseCgroupsPath(path); err == nil {
			_ = os.WriteFile(filepath.Join(h.Root, ref.Path, "cgroup.kill"), []byte("1"), 0)
		}
	}
	pids, err := h.pids(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil
		}
		return err
	}
	for _, p := range pids {
		if p > 1 && p != os.Getpid() { // see kill
			_ = unix.Kill(p, unix.SIGKILL)
		}
	}
	return nil
}

// remove removes the cgroup: for the systemd form its scope is stopped
// first (systemd removes the cgroup; what it leaves is removed here).
func (h cgroupHost) remove(path string) error {
	ref, err := parseCgroupsPath(path)
	if err != nil {
		return err
	}
	var errs []error
	if ref.systemd() && !h.NoSystemd {
		if err := stopScope(ref); err != nil {
			errs = append(errs, err)
		}
	}
	// Up to 5 s: threads killed a moment ago (a launcher thread that
	// joined the enclave cgroup) leave it only once they are reaped.
	for range 100 {
		if h.V2 {
			var m *cgroupsv2.Manager
			if m, err = h.loadV2(ref.Path); err == nil {
				err = m.Delete()
			}
		} else {
			var cg cgroup1.Cgroup
			if cg, err = cgroup1.Load(cgroup1.StaticPath(ref.Path), mountedV1); err == nil {
				err = cg.Delete()
			}
		}
		if err == nil || errors.Is(err, cgroup1.ErrCgroupDeleted) || errors.Is(err, os.ErrNotExist) {
			return errors.Join(errs...)
		}
		time.Sleep(50 * time.Millisecond) // exited processes leave the cgroup a moment later
	}
	return errors.Join(append(errs, fmt.Errorf("removing cgroup %s: %w", path, err))...)
}

// enclaveCgroupPath is where the backend's processes (QEMU) run: outside
// the Pod's hierarchy, like the CPUs and memory Nitro reserves for enclaves.
// It is made directly in cgroupfs with either cgroup driver, as nitro-cli's
// node cgroup is (enclave/nitrocli).
func enclaveCgroupPath(ns, id string) string {
	return "/nitropod/" + ns + "/" + id
}

// createEnclaveCgroup creates the enclave cgroup without limits. On v1 the
// launcher moves the thread that forks QEMU into it; on v2, which cannot
// move a single thread, QEMU is born in it (clone3 CLONE_INTO_CGROUP). It
// returns the path created.
func createEnclaveCgroup(path string) (string, error) {
	return nodeCgroups().createEnclave(path)
}

func (h cgroupHost) createEnclave(path string) (string, error) {
	if _, err := parseCgroupsPath(path); err != nil || strings.Contains(path, ":") {
		return "", fmt.Errorf("enclave cgroup %q: not an absolute cgroup path", path)
	}
	if h.V2 {
		if _, err := cgroupsv2.NewManager(h.Root, path, &cgroupsv2.Resources{}); err != nil {
			return "", fmt.Errorf("creating enclave cgroup %s: %w", path, err)
		}
		return path, nil
	}
	if _, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{}, mountedV1); err != nil {
		return "", fmt.Errorf("creating enclave cgroup %s: %w", path, err)
	}
	return path, nil
}

// removeCgroups kills what is left in each cgroup and removes it.
func removeCgroups(paths ...string) error {
	return nodeCgroups().removeAll(paths...)
}

func (h cgroupHost) removeAll(paths ...string) error {
	var errs []error
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := h.kill(p); err != nil {
			errs = append(errs, err)
		}
		if err := h.remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// nodeEnclaves says where enclavesOnNode looks for the enclave containers
// running on the node. The count does not depend on the cgroup version:
// every enclave container's bundle holds the state file the shim wrote
// (stateFile, with the launcher's pid) for as long as the task exists, and
// its launcher is a live process. Tests point the roots at temporary trees.
type nodeEnclaves struct {
	// CgroupRoot is the cgroupfs mount (/sys/fs/cgroup). Every
	// enclave also has an enclave cgroup there (v1 and v2), which outlives a
	// crashed shim.
	CgroupRoot string
	// TaskRoot holds containerd's task bundles as <namespace>/<id> (every
	// shim's, so every Pod's): the parent of a bundle's parent.
	TaskRoot string
	// ProcRoot is procfs (/proc).
	ProcRoot string
	// Launcher is the launcher executable's file name (its comm in procfs).
	Launcher string
}

// maxStateFileBytes bounds what enclavesOnNode reads of one state file.
const maxStateFileBytes = 64 << 10

// nodeEnclavesFor is the production view for a container whose bundle is
// bundle (containerd's <task root>/<namespace>/<id>), started with the
// launcher at launcherPath.
func nodeEnclavesFor(bundle, launcherPath string) nodeEnclaves {
	return nodeEnclaves{
		CgroupRoot: "/sys/fs/cgroup",
		TaskRoot:   filepath.Dir(filepath.Dir(filepath.Clean(bundle))),
		ProcRoot:   "/proc",
		Launcher:   filepath.Base(launcherPath),
	}
}

// enclavesOnNode counts the enclave containers running on the node: the
// bundles whose state file names a live launcher process, or the enclave
// cgroups if there are more of those (a shim that crashed left its enclave
// running). The container being created is not counted yet.
func (n nodeEnclaves) enclavesOnNode() int {
	return max(n.liveEnclaveRecords(), enclaveCgroupsV1(n.CgroupRoot), enclaveCgroupsV2(n.CgroupRoot))
}

// liveEnclaveRecords counts the bundles under TaskRoot with a state file
// whose launcher is still running.
func (n nodeEnclaves) liveEnclaveRecords() int {
	if n.TaskRoot == "" {
		return 0
	}
	files, _ := filepath.Glob(filepath.Join(n.TaskRoot, "*", "*", stateFile))
	count := 0
	for _, f := range files {
		st, err := readStateFile(f)
		if err != nil || st.LauncherPid <= 0 {
			continue
		}
		if n.launcherRunning(st.LauncherPid) {
			count++
		}
	}
	return count
}

func readStateFile(path string) (bundleState, error) {
	var v bundleState
	err := safefile.ReadJSON(path, maxStateFileBytes, &v)
	return v, err
}

// launcherRunning says whether pid is a running (not zombie) process whose
// command name is the launcher's, so that a recycled pid is not counted.
func (n nodeEnclaves) launcherRunning(pid int) bool {
	b, err := os.ReadFile(filepath.Join(n.ProcRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// "pid (comm) state ...": comm may itself hold parentheses.
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open || end+2 >= len(s) {
		return false
	}
	comm, state := s[open+1:end], s[end+2]
	want := n.Launcher
	if want == "" {
		want = LauncherBinary
	}
	if len(want) > 15 { // TASK_COMM_LEN - 1
		want = want[:15]
	}
	return comm == want && state != 'Z' && state != 'X'
}

// enclaveCgroupsV1 counts the enclave cgroups (/nitropod/<namespace>/<id>,
// every shim's) in the memory hierarchy of a cgroup v1 mount at root. It is
// 0 on cgroup v2 (see enclaveCgroupsV2).
func enclaveCgroupsV1(root string) int {
	dirs, _ := filepath.Glob(filepath.Join(root, "memory", "nitropod", "*", "*"))
	n := 0
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			n++
		}
	}
	return n
}

// enclaveCgroupsV2 counts the enclave cgroups of a cgroup v2 mount at root
// (the unified hierarchy: /nitropod/<namespace>/<id> directly under it).
// It is 0 on cgroup v1, whose root holds only the hierarchies.
func enclaveCgroupsV2(root string) int {
	dirs, _ := filepath.Glob(filepath.Join(root, "nitropod", "*", "*"))
	n := 0
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			n++
		}
	}
	return n
}

// hasController says whether the cgroup controller (such as "memory") can
// be used: on v2 it is listed in the root's cgroup.controllers (a v2 mount
// on a host whose controllers are bound to v1 lists none); on v1 its
// hierarchy is mounted.
func (h cgroupHost) hasController(name string) bool {
	if h.V2 {
		b, err := os.ReadFile(filepath.Join(h.Root, "cgroup.controllers"))
		return err == nil && slices.Contains(strings.Fields(string(b)), name)
	}
	var st unix.Statfs_t
	return unix.Statfs(filepath.Join(h.Root, name), &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC
}
