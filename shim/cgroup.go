package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The launcher is placed in the container's own cgroup (linux.cgroupsPath),
// created with the container's cpu/memory limits: those are the launcher
// limits the webhook set from nitro.k8s.anjuna.io/launcherCPU/Memory.

func checkCgroupsPath(p string) error {
	if strings.Contains(p, ":") {
		return fmt.Errorf("cgroupsPath %q uses the systemd driver form; nitropod needs containerd and kubelet configured with cgroupDriver cgroupfs", p)
	}
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("cgroupsPath %q is not absolute", p)
	}
	return nil
}

// launcherResources keeps the limits that apply to the launcher: cpu,
// memory and pids. The spec's device rules are for a container's own /dev
// and would stop the launcher and QEMU from opening /dev/null or /dev/kvm.
func launcherResources(res *specs.LinuxResources) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if res != nil {
		out.CPU = res.CPU
		out.Memory = res.Memory
		out.Pids = res.Pids
	}
	return out
}

// createCgroup creates the cgroup with the launcher limits and moves pid
// into it.
func createCgroup(path string, res *specs.LinuxResources, pid int) error {
	if err := checkCgroupsPath(path); err != nil {
		return err
	}
	res = launcherResources(res)
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroupsv2.NewManager("/sys/fs/cgroup", path, cgroupsv2.ToResources(res))
		if err != nil {
			return fmt.Errorf("creating cgroup %s: %w", path, err)
		}
		if err := m.AddProc(uint64(pid)); err != nil {
			return fmt.Errorf("moving launcher into cgroup %s: %w", path, err)
		}
		return nil
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(path), res)
	if err != nil {
		return fmt.Errorf("creating cgroup %s: %w", path, err)
	}
	if err := cg.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("moving launcher into cgroup %s: %w", path, err)
	}
	return nil
}

func updateCgroup(path string, res *specs.LinuxResources) error {
	if res == nil {
		return nil
	}
	res = launcherResources(res)
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroupsv2.Load(path)
		if err != nil {
			return err
		}
		return m.Update(cgroupsv2.ToResources(res))
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return err
	}
	return cg.Update(res)
}

// cgroupStats returns metrics in the form CRI converts (cgroup v1 or v2
// Metrics).
func cgroupStats(path string) (any, error) {
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroupsv2.Load(path)
		if err != nil {
			return nil, err
		}
		return m.Stat()
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return nil, err
	}
	return cg.Stat(cgroup1.IgnoreNotExist)
}

func cgroupPids(path string) ([]int, error) {
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroupsv2.Load(path)
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
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return nil, err
	}
	ps, err := cg.Processes(cgroup1.Pids, true)
	if err != nil {
		// Not every node mounts the pids controller; fall back to cpu.
		ps, err = cg.Processes(cgroup1.Cpu, true)
	}
	out := make([]int, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Pid)
	}
	return out, err
}

// killCgroup SIGKILLs every process in the cgroup, a few rounds in case a
// process was forking.
func killCgroup(path string) error {
	for range 10 {
		pids, err := cgroupPids(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, cgroup1.ErrCgroupDeleted) {
				return nil
			}
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		for _, p := range pids {
			_ = unix.Kill(p, unix.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("processes still in cgroup %s after SIGKILL", path)
}

func deleteCgroup(path string) error {
	var err error
	// Up to 5 s: threads killed a moment ago (a launcher thread that
	// joined the enclave cgroup) leave it only once they are reaped.
	for range 100 {
		if cgroups.Mode() == cgroups.Unified {
			var m *cgroupsv2.Manager
			if m, err = cgroupsv2.Load(path); err == nil {
				err = m.Delete()
			}
		} else {
			var cg cgroup1.Cgroup
			if cg, err = cgroup1.Load(cgroup1.StaticPath(path)); err == nil {
				err = cg.Delete()
			}
		}
		if err == nil || errors.Is(err, cgroup1.ErrCgroupDeleted) || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // exited processes leave the cgroup a moment later
	}
	return fmt.Errorf("removing cgroup %s: %w", path, err)
}

// enclaveCgroupPath is where the backend's processes (QEMU) run: outside
// the Pod's hierarchy, like the CPUs and memory Nitro reserves for enclaves.
func enclaveCgroupPath(ns, id string) string {
	return "/nitropod/" + ns + "/" + id
}

// createEnclaveCgroup creates the enclave cgroup without limits (cgroup v1
// only: v2 cannot take a single thread into a domain cgroup; there QEMU
// stays in the container's cgroup). It returns "" when not created.
func createEnclaveCgroup(path string) (string, error) {
	if cgroups.Mode() == cgroups.Unified {
		return "", nil
	}
	if _, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{}); err != nil {
		return "", fmt.Errorf("creating enclave cgroup %s: %w", path, err)
	}
	return path, nil
}

// removeCgroups kills what is left in each cgroup and removes it.
func removeCgroups(paths ...string) error {
	var errs []error
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := killCgroup(p); err != nil {
			errs = append(errs, err)
		}
		if err := deleteCgroup(p); err != nil {
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
	// CgroupRoot is the cgroupfs mount (/sys/fs/cgroup). On cgroup v1 every
	// enclave also has an enclave cgroup there, which outlives a crashed shim.
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
// bundles whose state file names a live launcher process, or on cgroup v1
// the enclave cgroups if there are more of those (a shim that crashed left
// its enclave running). The container being created is not counted yet.
func (n nodeEnclaves) enclavesOnNode() int {
	return max(n.liveEnclaveRecords(), enclaveCgroupsV1(n.CgroupRoot))
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
	var st bundleState
	f, err := os.Open(path)
	if err != nil {
		return st, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFileBytes+1))
	if err != nil {
		return st, err
	}
	if len(b) > maxStateFileBytes {
		return st, fmt.Errorf("%s is larger than %d bytes", path, maxStateFileBytes)
	}
	err = json.Unmarshal(b, &st)
	return st, err
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
// 0 on cgroup v2, where no enclave cgroup is made (createEnclaveCgroup).
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
