package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	for range 20 {
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

// enclavesOnNode counts the enclave containers running on the node: one
// enclave cgroup each (/nitropod/<namespace>/<id>, every shim's), in the
// memory hierarchy under root. 0 when unknown (cgroup v2).
func enclavesOnNode(root string) int {
	dirs, _ := filepath.Glob(filepath.Join(root, "memory", "nitropod", "*", "*"))
	n := 0
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			n++
		}
	}
	return n
}
