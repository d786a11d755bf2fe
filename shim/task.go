package shim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eifcache"
	"github.com/nitropod/nitropod/shim/launcher"
)

type taskStatus int

const (
	statusCreated taskStatus = iota
	statusRunning
	statusStopped
)

// enclaveTask is one enclave container: its launcher is the task's init
// process.
type enclaveTask struct {
	id, bundle  string
	pid         int
	cgroupsPath string
	// enclaveCgroup holds QEMU (emulation), outside the launcher limits.
	enclaveCgroup string
	backend       string
	stdin         string
	stdout        string
	stderr        string
	terminal      bool
	entry         *eifcache.Entry

	mu     sync.Mutex
	status taskStatus
	startW *os.File
	// ready is the launcher's status pipe: "ok" after Create, then
	// "started" or "error: …" after Start.
	ready     *os.File
	readyLine *bufio.Reader
	// starting is set while Start waits for the app; startDone closes when
	// it has finished, so that TaskStart precedes TaskExit.
	starting   bool
	startDone  chan struct{}
	exited     chan struct{}
	exitStatus int
	exitedAt   time.Time
	// execs are the container's execs by exec id (exec.go).
	execs map[string]*execProcess
}

// createEnclave gets the EIF, starts the launcher in the container's cgroup
// and waits until it is ready to start.
func (s *service) createEnclave(ctx context.Context, r *taskAPI.CreateTaskRequest, spec *specs.Spec, plan Plan, cfg Config) (_ *enclaveTask, retErr error) {
	logger := log.G(ctx).WithField("id", r.ID)
	t0 := time.Now()
	launcherPath, err := findLauncher(cfg)
	if err != nil {
		return nil, err
	}
	onNode := nodeEnclavesFor(r.Bundle, launcherPath).enclavesOnNode()
	if err := checkLicense(ctx, spec, cfg, s.enclaveCount()+1, onNode+1); err != nil {
		return nil, err
	}
	cache, err := s.cache(cfg)
	if err != nil {
		return nil, err
	}
	entry, err := getEIF(ctx, cache, r, spec, plan, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			entry.Release()
		}
	}()
	m, err := eifMeasurements(entry.Path)
	if err != nil {
		return nil, err
	}
	if plan.ImageLocation == "" { // imageLocation EIFs were checked when fetched
		if err := checkExpectedBuilt(spec, m); err != nil {
			return nil, err
		}
	}
	fields := log.Fields{"eif": entry.Path, "cache_hit": entry.Hit, "duration": time.Since(t0).String(), "pcr0": m.PCR0, "pcr1": m.PCR1, "pcr2": m.PCR2}
	if entry.Replaced != "" {
		fields["replaced_corrupt"] = entry.Replaced
	}
	logger.WithFields(fields).Info("enclave image ready")

	netns := ""
	cgroupsPath := ""
	var resources *specs.LinuxResources
	if spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace && ns.Path != "" {
				netns = ns.Path
			}
		}
		cgroupsPath = spec.Linux.CgroupsPath
		resources = spec.Linux.Resources
	}
	ns, _ := namespaces.Namespace(ctx)
	enclaveCgroup, err := createEnclaveCgroup(enclaveCgroupPath(ns, r.ID))
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = removeCgroups(enclaveCgroup)
		}
	}()
	lspec := launcher.Spec{
		ID:        r.ID,
		Bundle:    r.Bundle,
		EIFPath:   entry.Path,
		CPUs:      plan.CPUs,
		CPUIDs:    plan.CPUIDs,
		MemoryMiB: plan.MemoryMiB,
		Debug:     plan.Debug,
		Backend: launcher.BackendConfig{
			Name:        cfg.Backend,
			QEMUBinary:  cfg.QEMU.Binary,
			QEMUAccel:   cfg.QEMU.Accel,
			NitroCLI:    cfg.NitroCLI,
			NitroCgroup: cfg.NitroCgroup,
			StateDir:    cfg.RunDir,
		},
		Stdin:         r.Stdin,
		Stdout:        r.Stdout,
		Stderr:        r.Stderr,
		NetNS:         netns,
		Ports:         plan.Ports,
		UDPPorts:      plan.UDPPorts,
		EnclaveCgroup: enclaveCgroup,
	}
	if _, ok := spec.Annotations[nitropod.EnclavesAnnotation]; ok {
		// A Pod the nitropod webhook admitted: its users see the PCRs at
		// the top of the container's log (other CRI clients, such as
		// conformance suites, compare logs line by line).
		lspec.Measurements = &m
	}
	if !plan.Deliver.Empty() {
		d := plan.Deliver
		lspec.Deliver = &d
	}
	if err := launcher.WriteSpec(lspec); err != nil {
		return nil, err
	}
	startR, startW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer startR.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		startW.Close()
		return nil, err
	}
	defer func() {
		if retErr != nil {
			readyR.Close()
		}
	}()

	cmd := exec.Command(launcherPath, filepath.Join(r.Bundle, launcher.SpecFile))
	cmd.Dir = r.Bundle
	cmd.ExtraFiles = []*os.File{startR, readyW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "GOMAXPROCS=1", "GOGC=50"}

	t := &enclaveTask{
		id: r.ID, bundle: r.Bundle, cgroupsPath: cgroupsPath, enclaveCgroup: enclaveCgroup, backend: cfg.Backend,
		stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal,
		entry: entry, startW: startW, ready: readyR, readyLine: bufio.NewReader(readyR), exited: make(chan struct{}),
	}
	// Hold s.mu across Start and registration so the exit of a launcher
	// that dies at once is not missed by processExits.
	s.mu.Lock()
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		startW.Close()
		readyW.Close()
		return nil, fmt.Errorf("starting %s: %w", launcherPath, err)
	}
	t.pid = cmd.Process.Pid
	// The shim's reaper waits for it; drop os.Process's handle (a pidfd).
	_ = cmd.Process.Release()
	s.byPid[t.pid] = t
	s.tasks[r.ID] = t
	s.mu.Unlock()
	readyW.Close()
	defer func() {
		if retErr != nil {
			_ = unix.Kill(t.pid, unix.SIGKILL)
			s.mu.Lock()
			delete(s.tasks, r.ID)
			s.mu.Unlock()
			startW.Close()
			_ = removeCgroups(cgroupsPath)
		}
	}()
	if err := writeState(r.Bundle, bundleState{LauncherPid: t.pid, CgroupsPath: cgroupsPath, EnclaveCgroup: enclaveCgroup, Backend: cfg.Backend, NitroCLI: cfg.NitroCLI}); err != nil {
		return nil, err
	}
	if cgroupsPath != "" {
		if err := createCgroup(cgroupsPath, resources, t.pid); err != nil {
			if errors.Is(err, unix.ESRCH) || unix.Kill(t.pid, 0) != nil {
				return nil, fmt.Errorf("the launcher (pid %d) exited while the container was being created; see %s", t.pid, filepath.Join(r.Bundle, launcher.LogFile))
			}
			return nil, err
		}
	}
	// The launcher answers once it has opened the stdio FIFOs.
	line := make(chan string, 1)
	go func() {
		l, _ := t.readyLine.ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	select {
	case l := <-line:
		if l != "ok" {
			if l == "" {
				l = "launcher exited before it was ready; see " + filepath.Join(r.Bundle, launcher.LogFile)
			}
			return nil, fmt.Errorf("preparing enclave container: %s", strings.TrimPrefix(l, "error: "))
		}
	case <-time.After(30 * time.Second):
		return nil, errors.New("preparing enclave container: the launcher did not get ready within 30s")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	logger.WithFields(log.Fields{"launcher_pid": t.pid, "create_duration": time.Since(t0).String()}).Info("enclave container created")
	// Building or verifying the EIF went through large buffers: return
	// them to the OS, the shim lives as long as the Pod.
	go func() {
		// Two collections: sync.Pool buffers (eif's) survive the first.
		runtime.GC()
		debug.FreeOSMemory()
	}()
	return t, nil
}

// StartTimeout bounds how long Start waits for the enclave to boot and
// init to start the app (an emulated boot under TCG on a loaded machine
// takes seconds; a Nitro boot of a large EIF tens of seconds).
var StartTimeout = 5 * time.Minute

// start lets the launcher boot the enclave and returns once init has
// started the app inside it, as runc's start returns once the process was
// exec'd. A boot or start failure is Start's error, with the launcher's
// reason (containerd's CRI reports it as the container's StartError), and
// the launcher is stopped. TaskStart is published only for a started app,
// and always before its TaskExit.
func (t *enclaveTask) start(s *service) error {
	t.mu.Lock()
	switch {
	case t.status == statusRunning || t.starting:
		t.mu.Unlock()
		return fmt.Errorf("container %s: %w", t.id, errdefs.ErrAlreadyExists)
	case t.status == statusStopped:
		t.mu.Unlock()
		return fmt.Errorf("container %s exited before it was started (its launcher ended with status %d; see %s): %w",
			t.id, t.exitStatus, filepath.Join(t.bundle, launcher.LogFile), errdefs.ErrFailedPrecondition)
	}
	t.starting = true
	t.startDone = make(chan struct{})
	t.mu.Unlock()

	_, err := t.startW.Write([]byte{1})
	t.startW.Close()
	line := ""
	if err != nil {
		err = fmt.Errorf("starting launcher: %w", err)
	} else {
		got := make(chan string, 1)
		go func() {
			l, _ := t.readyLine.ReadString('\n')
			got <- strings.TrimSpace(l)
		}()
		select {
		case line = <-got:
		case <-time.After(StartTimeout):
			line = fmt.Sprintf("error: the enclave did not start the app within %v", StartTimeout)
		}
		switch {
		case line == "started":
		case strings.HasPrefix(line, "error: "):
			err = errors.New(strings.TrimPrefix(line, "error: "))
		default:
			err = fmt.Errorf("the launcher exited before the app started; see %s", filepath.Join(t.bundle, launcher.LogFile))
		}
	}
	t.ready.Close()

	t.mu.Lock()
	t.starting = false
	if err == nil {
		t.status = statusRunning
		s.send(&eventstypes.TaskStart{ContainerID: t.id, Pid: uint32(t.pid)})
	}
	close(t.startDone)
	t.mu.Unlock()
	if err != nil {
		// Nothing of a failed start keeps running: the launcher, QEMU, and
		// on Nitro the enclave it recorded.
		_ = t.kill(s.ctx, uint32(unix.SIGKILL))
		return err
	}
	return nil
}

func (t *enclaveTask) handleExit(s *service, status int, at time.Time) {
	t.mu.Lock()
	if t.starting {
		// Start is reading the launcher's last words: let it publish
		// TaskStart (or fail) first.
		done := t.startDone
		t.mu.Unlock()
		<-done
		t.mu.Lock()
	}
	if t.status == statusStopped {
		t.mu.Unlock()
		return
	}
	t.status = statusStopped
	t.exitStatus = status
	t.exitedAt = at
	if t.startW != nil {
		t.startW.Close()
	}
	if _, err := os.Stat(filepath.Join(t.bundle, launcher.OOMFile)); err == nil {
		// The enclave kernel's OOM killer ended the app: CRI reports the
		// reason OOMKilled when TaskOOM precedes the exit.
		s.send(&eventstypes.TaskOOM{ContainerID: t.id})
	}
	s.send(&eventstypes.TaskExit{
		ContainerID: t.id,
		ID:          t.id,
		Pid:         uint32(t.pid),
		ExitStatus:  uint32(status),
		ExitedAt:    protobuf.ToTimestamp(at),
	})
	close(t.exited)
	t.mu.Unlock()
	// QEMU (or anything else the launcher left) goes with it.
	for _, cg := range []string{t.cgroupsPath, t.enclaveCgroup} {
		if cg != "" {
			_ = killCgroup(cg)
		}
	}
	if status != 0 {
		// Only the tail: the log holds a debug enclave's console too.
		if b, err := launcher.ReadLogTail(filepath.Join(t.bundle, launcher.LogFile), 65536); err == nil {
			log.G(s.ctx).WithFields(log.Fields{"id": t.id, "exit_status": status, "launcher_log": string(b)}).Warn("enclave container exited")
		}
	}
}

func (t *enclaveTask) kill(ctx context.Context, sig uint32) error {
	select {
	case <-t.exited:
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	default:
	}
	if syscall.Signal(sig) != unix.SIGKILL {
		if err := unix.Kill(t.pid, syscall.Signal(sig)); err != nil {
			if errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
			}
			return fmt.Errorf("signalling launcher: %w", err)
		}
		return nil
	}
	// SIGKILL terminates the enclave: the launcher, QEMU and (on Nitro)
	// the enclave recorded by the launcher.
	if rec, err := launcher.ReadRecord(t.bundle); err == nil {
		if err := launcher.TerminateRecorded(ctx, rec); err != nil {
			log.G(ctx).WithError(err).Warn("terminating enclave")
		}
	}
	_ = unix.Kill(-t.pid, unix.SIGKILL)
	_ = unix.Kill(t.pid, unix.SIGKILL)
	// Signal only: a Kill that waited for the cgroups to empty could still
	// be running when containerd, told of the exit, deletes the task and
	// closes the connection (delete waits and removes them).
	for _, cg := range []string{t.cgroupsPath, t.enclaveCgroup} {
		if cg == "" {
			continue
		}
		if err := signalCgroup(cg); err != nil {
			return err
		}
	}
	return nil
}

// delete frees everything: the launcher (if still there), the cgroup, the
// rootfs mount and the cache reference.
func (t *enclaveTask) delete(ctx context.Context) (int, time.Time) {
	select {
	case <-t.exited:
	default:
		_ = t.kill(ctx, uint32(unix.SIGKILL))
		select {
		case <-t.exited:
		case <-time.After(10 * time.Second):
			log.G(ctx).WithField("id", t.id).Warn("launcher did not exit after SIGKILL")
		}
	}
	if err := removeCgroups(t.cgroupsPath, t.enclaveCgroup); err != nil {
		log.G(ctx).WithError(err).Warn("removing container cgroups")
	}
	if err := unmountRootfs(filepath.Join(t.bundle, "rootfs")); err != nil {
		log.G(ctx).WithError(err).Warn("unmounting rootfs")
	}
	t.closeExecs()
	t.entry.Release()
	t.ready.Close() // a container deleted without Start still holds it
	_ = os.Remove(filepath.Join(t.bundle, stateFile))
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.exitStatus, t.exitedAt
}

func (t *enclaveTask) state() *taskAPI.StateResponse {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := task.Status_CREATED
	switch t.status {
	case statusRunning:
		st = task.Status_RUNNING
	case statusStopped:
		st = task.Status_STOPPED
	}
	return &taskAPI.StateResponse{
		ID:         t.id,
		Bundle:     t.bundle,
		Pid:        uint32(t.pid),
		Status:     st,
		Stdin:      t.stdin,
		Stdout:     t.stdout,
		Stderr:     t.stderr,
		Terminal:   t.terminal,
		ExitStatus: uint32(t.exitStatus),
		ExitedAt:   protobuf.ToTimestamp(t.exitedAt),
	}
}

func (t *enclaveTask) pids() *taskAPI.PidsResponse {
	var ps []int
	if t.cgroupsPath != "" {
		ps, _ = cgroupPids(t.cgroupsPath)
	}
	if len(ps) == 0 {
		select {
		case <-t.exited:
		default:
			ps = []int{t.pid}
		}
	}
	out := &taskAPI.PidsResponse{}
	for _, p := range ps {
		out.Processes = append(out.Processes, &task.ProcessInfo{Pid: uint32(p)})
	}
	return out
}

func (t *enclaveTask) update(ctx context.Context, res *ptypes.Any) error {
	if res == nil || t.cgroupsPath == "" {
		return nil
	}
	v, err := typeurl.UnmarshalAny(res)
	if err != nil {
		return fmt.Errorf("decoding resources: %w", err)
	}
	lr, ok := v.(*specs.LinuxResources)
	if !ok {
		return fmt.Errorf("update resources of type %T: %w", v, errdefs.ErrInvalidArgument)
	}
	// The enclave's own size is fixed at boot; the cgroup limits are the
	// launcher's.
	return updateCgroup(t.cgroupsPath, lr)
}

// findLauncher is cfg.LauncherPath, else nitropod-launcher next to the shim
// binary, else on PATH.
func findLauncher(cfg Config) (string, error) {
	return findHelper(cfg.LauncherPath, LauncherBinary, "launcher_path")
}

// findHelper is configured, else name next to the shim binary, else on PATH.
func findHelper(configured, name, key string) (string, error) {
	if configured != "" {
		return configured, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found next to the shim or on PATH: install it, or set %s in the shim config", name, key)
}

func (s *service) cache(cfg Config) (*eifcache.Cache, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.caches[cfg.CacheDir]; ok {
		return c, nil
	}
	c, err := eifcache.Open(cfg.CacheDir, cfg.CacheMaxBytes)
	if err != nil {
		return nil, err
	}
	s.caches[cfg.CacheDir] = c
	return c, nil
}

func (s *service) enclaveCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tasks)
}
