package nitrocli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultCgroup is the node-level cgroup nitro-cli runs in, relative to the
// root of each cgroup hierarchy.
const DefaultCgroup = "nitropod-enclaves"

// DefaultCgroupRoot is where the cgroup hierarchies are mounted.
const DefaultCgroupRoot = "/sys/fs/cgroup"

// CheckCgroup validates a node-level cgroup path: relative to the hierarchy
// root (a leading "/" is allowed), clean, without "..".
func CheckCgroup(p string) error {
	rel := strings.TrimPrefix(p, "/")
	if rel == "" || path.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("nitro-cli cgroup %q is not a clean path below the cgroup root: use a name such as %q", p, DefaultCgroup)
	}
	return nil
}

// notStartedError is a nitro-cli command that did not start.
type notStartedError struct{ err error }

func (e *notStartedError) Error() string { return "not started: " + e.err.Error() }
func (e *notStartedError) Unwrap() error { return e.err }

// nodeCgroup starts processes in the node-level cgroup path under root, in
// every hierarchy, so that nitro-cli and the enclave process it daemonises
// are outside the Pod's cgroup. There kubelet sets the hugetlb limit of
// every page size the Pod did not request to 0, and the enclave's memory
// comes from hugepages; and the enclave process outlives any one Pod's
// launcher. The cgroup is created on first use, without limits.
type nodeCgroup struct {
	root string
	path string // relative, checked
}

// start starts cmd inside the node cgroup. On cgroup v2 the child is born
// there (clone3 with CLONE_INTO_CGROUP). On v1 (and hybrid) cmd is forked
// from an OS thread that first moved itself into the cgroup of every v1
// hierarchy; the thread is discarded afterwards.
func (c *nodeCgroup) start(cmd *exec.Cmd) error {
	if c == nil {
		return cmd.Start()
	}
	if err := CheckCgroup(c.path); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(c.root, &st); err != nil {
		return fmt.Errorf("reading the cgroup mount %s: %w", c.root, err)
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return c.startV2(cmd)
	}
	return onThrowawayThread(func() error {
		if err := c.joinV1(unix.Gettid()); err != nil {
			return err
		}
		return cmd.Start()
	})
}

// onThrowawayThread runs fn on an OS thread of its own that ends with it,
// and is never the main thread: Go cannot end the main thread and would
// keep it, moved, for the rest of the process (and v1's memory controller
// charges the process to its main thread's cgroup).
func onThrowawayThread(fn func() error) error {
	var run func(out chan<- error)
	run = func(out chan<- error) {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// On the main thread: keep it busy (locked) so that a new
			// goroutine gets another thread, then give it back untouched.
			inner := make(chan error, 1)
			go run(inner)
			err := <-inner
			runtime.UnlockOSThread()
			out <- err
			return
		}
		// Never unlocked: the thread ends with this goroutine.
		out <- fn()
	}
	errc := make(chan error, 1)
	go run(errc)
	return <-errc
}

func (c *nodeCgroup) startV2(cmd *exec.Cmd) error {
	dir := filepath.Join(c.root, c.path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the nitro-cli cgroup: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the nitro-cli cgroup: %w", err)
	}
	defer unix.Close(fd)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = fd
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting nitro-cli in cgroup %s: %w", dir, err)
	}
	return nil
}

// joinV1 moves thread tid into the cgroup in every v1 hierarchy under root
// (creating it), skipping a cgroup v2 mount (hybrid layout).
func (c *nodeCgroup) joinV1(tid int) error {
	des, err := os.ReadDir(c.root)
	if err != nil {
		return fmt.Errorf("listing cgroup hierarchies: %w", err)
	}
	seen := map[string]bool{}
	joined := 0
	for _, de := range des {
		hier, err := filepath.EvalSymlinks(filepath.Join(c.root, de.Name()))
		if err != nil || seen[hier] {
			continue
		}
		seen[hier] = true
		var st unix.Statfs_t
		if unix.Statfs(hier, &st) != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			continue
		}
		dir := filepath.Join(hier, c.path)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating the nitro-cli cgroup: %w", err)
		}
		for cur, rest := hier, c.path; rest != ""; {
			comp, tail, _ := strings.Cut(rest, "/")
			cur, rest = filepath.Join(cur, comp), tail
			if err := initCpuset(cur); err != nil {
				return err
			}
		}
		tasks := filepath.Join(dir, "tasks")
		if err := os.WriteFile(tasks, []byte(strconv.Itoa(tid)), 0); err != nil {
			return fmt.Errorf("moving nitro-cli into %s: %w", tasks, err)
		}
		joined++
	}
	if joined == 0 {
		return fmt.Errorf("no cgroup v1 hierarchy under %s to put nitro-cli in", c.root)
	}
	return nil
}

// initCpuset gives a new cpuset cgroup dir its parent's cpus and mems (v1
// does not, and refuses tasks until both are set). Other hierarchies have no
// cpuset files and are left alone.
func initCpuset(dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		cur, err := os.ReadFile(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", filepath.Join(dir, f), err)
		}
		if strings.TrimSpace(string(cur)) != "" {
			continue
		}
		v, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
		if err != nil {
			return fmt.Errorf("reading the parent's %s: %w", f, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), v, 0); err != nil {
			return fmt.Errorf("setting %s: %w", filepath.Join(dir, f), err)
		}
	}
	return nil
}
