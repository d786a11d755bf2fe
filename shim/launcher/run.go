package launcher

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/enclave/podnet"
)

// Main is the launcher's entry point: nitropod-launcher SPECFILE, with the
// start and ready pipes as fds 3 and 4. It returns the exit code.
func Main(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: nitropod-launcher SPECFILE (started by containerd-shim-nitro-v1)")
		return 2
	}
	spec, err := ReadSpec(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "nitropod-launcher:", err)
		return ExitSetupFailed
	}
	// The log also takes a debug enclave's console: capped (LogWriter), so
	// that a flooding app cannot fill the bundle's tmpfs.
	var logf io.WriteCloser = os.Stderr
	if lw, err := OpenLog(filepath.Join(spec.Bundle, LogFile), MaxLogBytes); err == nil {
		logf = lw
	}
	defer logf.Close()
	logger := log.New(logf, "nitropod-launcher["+strconv.Itoa(os.Getpid())+"] ", log.LstdFlags|log.Lmicroseconds)
	// Packages that log through the standard logger (the nitro-cli
	// backend's refused vsock peers) write to the same capped log.
	log.SetOutput(logf)
	log.SetPrefix(logger.Prefix())
	log.SetFlags(logger.Flags())
	start := os.NewFile(StartFD, "start")
	ready := os.NewFile(ReadyFD, "ready")
	if start == nil || ready == nil {
		logger.Print("start/ready pipes missing: the launcher is started by containerd-shim-nitro-v1 only")
		return ExitSetupFailed
	}
	// Inherited without close-on-exec: set it, so that QEMU (forked by the
	// launcher) does not hold the pipes and the shim sees them close when
	// the launcher dies.
	unix.CloseOnExec(StartFD)
	unix.CloseOnExec(ReadyFD)
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH)
	signal.Ignore(unix.SIGPIPE)
	return Run(context.Background(), spec, start, ready, sigs, logger, logf)
}

// Run runs one enclave container; see the package doc for the steps. start
// and ready are the pipes to the shim, sigs the launcher's own signals. It
// returns the launcher's exit code: the app's exit status, or ExitSetupFailed
// / ExitNotStarted.
func Run(ctx context.Context, spec Spec, start io.Reader, ready io.WriteCloser, sigs <-chan os.Signal, logger *log.Logger, console io.Writer) int {
	rio, closeIO, err := openStdio(ctx, spec)
	if err != nil {
		fmt.Fprintf(ready, "error: %v\n", err)
		ready.Close()
		return ExitSetupFailed
	}
	defer closeIO()
	backend, err := NewBackend(spec.Backend)
	if err != nil {
		fmt.Fprintf(ready, "error: %v\n", err)
		ready.Close()
		return ExitSetupFailed
	}
	if err := placeBackend(backend, spec.EnclaveCgroup); err != nil {
		fmt.Fprintf(ready, "error: %v\n", err)
		ready.Close()
		return ExitSetupFailed
	}
	// "ok" now; after the shim's Start, "started" once init has exec'd the
	// app, or "error: …" if the enclave could not start it. Only then is
	// the pipe closed (it is close-on-exec, so a crashed launcher closes it
	// even with QEMU still running).
	fmt.Fprintln(ready, "ok")
	defer ready.Close()

	// Created: wait for the shim's Start (or a signal, or the shim's death).
	started := make(chan bool, 1)
	go func() {
		var b [1]byte
		n, _ := start.Read(b[:])
		started <- n == 1
	}()
	select {
	case ok := <-started:
		if !ok {
			logger.Print("start pipe closed before start; exiting")
			return ExitNotStarted
		}
	case sig := <-sigs:
		logger.Printf("signal %v before start; exiting", sig)
		return 128 + int(sig.(syscall.Signal))
	}

	var dv *delivery
	if spec.Deliver != nil {
		var err error
		if dv, err = collectDelivery(spec); err != nil {
			logger.Printf("collecting delivered configuration: %v", err)
			if rio.Stderr != nil {
				fmt.Fprintf(rio.Stderr, "nitropod: %v\n", err)
			}
			fmt.Fprintf(ready, "error: %s\n", oneLine(err.Error()))
			return ExitSetupFailed
		}
		rio.Deliver = dv.send
		logger.Printf("delivering %d env, %d mounts, %d bytes", len(dv.d.Env), len(dv.d.Mounts), dv.d.Size())
	}

	if m := spec.Measurements; m != nil && rio.Stderr != nil {
		fmt.Fprintln(rio.Stderr, MeasurementsLine(*m))
	}

	req := enclave.Request{
		Name:      spec.ID,
		EIFPath:   spec.EIFPath,
		CPUs:      spec.CPUs,
		CPUIDs:    spec.CPUIDs,
		MemoryMiB: spec.MemoryMiB,
		Debug:     spec.Debug,
	}
	if spec.Debug {
		req.Console = console
	}
	for _, p := range spec.Ports {
		rio.Publish = append(rio.Publish, enclave.PortMapping{HostAddr: ":" + strconv.Itoa(int(p)), EnclavePort: p})
	}
	for _, p := range spec.UDPPorts {
		rio.PublishUDP = append(rio.PublishUDP, enclave.PortMapping{HostAddr: ":" + strconv.Itoa(int(p)), EnclavePort: p})
	}
	rio.Progress = func(stage string) { logger.Print(stage) }
	// The enclave's network (enclave/podnet): egress leaves from the Pod's
	// namespace with the Pod IP, every port the app listens on is
	// published there.
	ns, err := podnet.OpenNS(spec.NetNS)
	if err != nil {
		fmt.Fprintf(ready, "error: %v\n", err)
		return ExitSetupFailed
	}
	defer ns.Close()
	netCfg := &podnet.HostConfig{Net: ns, AutoListen: true, Logf: logger.Printf}
	if spec.NetNS != "" {
		netCfg.Addr = ns.PodAddr()
	}
	rio.Net = netCfg
	statsFailed := false
	rio.Stats = func(st agent.Stats) {
		if err := writeStats(spec.Bundle, StatsRecord{At: time.Now(), Stats: st}); err != nil && !statsFailed {
			statsFailed = true // once: init reports every few seconds
			logger.Print(err)
		}
	}

	if spec.Backend.Name == "nitro-cli" {
		if err := writeRecord(spec.Bundle, Record{Backend: spec.Backend.Name, EnclaveName: spec.ID, NitroCLI: spec.Backend.NitroCLI}); err != nil {
			logger.Printf("writing enclave record: %v", err)
		}
	}
	bootCtx, cancelBoot := context.WithCancel(ctx)
	defer cancelBoot()
	type startRes struct {
		s   *enclave.Session
		err error
	}
	res := make(chan startRes, 1)
	t0 := time.Now()
	go func() {
		var s *enclave.Session
		err := onBackendThread(spec.NetNS, spec.EnclaveCgroup, func() error {
			var err error
			s, err = enclave.Start(bootCtx, backend, req, rio)
			return err
		})
		res <- startRes{s, err}
	}()
	var sess *enclave.Session
	for sess == nil {
		select {
		case r := <-res:
			if r.err != nil {
				logger.Printf("starting enclave: %v", r.err)
				if rio.Stderr != nil {
					fmt.Fprintf(rio.Stderr, "nitropod: starting enclave: %v\n", r.err)
				}
				fmt.Fprintf(ready, "error: starting enclave: %s\n", oneLine(r.err.Error()))
				return ExitSetupFailed
			}
			sess = r.s
		case sig := <-sigs:
			// Stopped while booting: abandon the boot (Start leaves nothing
			// running when its ctx ends).
			logger.Printf("signal %v while booting; aborting", sig)
			cancelBoot()
			if r := <-res; r.s != nil {
				_ = r.s.Terminate(context.Background())
			}
			return 128 + int(sig.(syscall.Signal))
		}
	}
	// Booting read the EIF through large buffers; give that memory back
	// now, the launcher's steady state is small (it is charged to the Pod).
	// Two collections: sync.Pool buffers (the EIF verifier's) survive one.
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	logger.Printf("memory: heap in use %d KiB, stacks %d KiB, runtime total %d KiB", ms.HeapInuse>>10, ms.StackInuse>>10, ms.Sys>>10)
	logger.Printf("app started in enclave %s (cid %d) after %v", sess.Enclave().ID(), sess.Enclave().CID(), time.Since(t0).Round(time.Millisecond))
	fmt.Fprintln(ready, "started")
	ready.Close()
	if err := writeRecord(spec.Bundle, Record{Backend: spec.Backend.Name, EnclaveID: sess.Enclave().ID(), EnclaveName: spec.ID, CID: sess.Enclave().CID(), NitroCLI: spec.Backend.NitroCLI}); err != nil {
		logger.Printf("writing enclave record: %v", err)
	}
	if dv != nil {
		watchCtx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go dv.watch(watchCtx, logger.Printf)
	}
	stopExec, err := ServeExec(spec.Bundle, sess, logger)
	if err != nil {
		logger.Printf("exec is unavailable: %v", err)
		stopExec = func() {}
	}
	go func() {
		for sig := range sigs {
			if sig == unix.SIGWINCH {
				continue
			}
			if err := sess.Signal(sig.(syscall.Signal)); err != nil {
				logger.Printf("forwarding %v: %v", sig, err)
			}
		}
	}()
	st, err := sess.Wait()
	stopExec()
	if err != nil {
		logger.Printf("enclave ended: %v", err)
		if rio.Stderr != nil {
			fmt.Fprintf(rio.Stderr, "nitropod: %v\n", err)
		}
	}
	logger.Printf("app exited: code %d signal %d oom-killed %v", st.Code, st.Signal, st.OOMKilled)
	if st.OOMKilled {
		// The shim publishes TaskOOM before the exit (see OOMFile).
		if err := os.WriteFile(filepath.Join(spec.Bundle, OOMFile), nil, 0o600); err != nil {
			logger.Printf("recording the OOM kill: %v", err)
		}
	}
	return st.Code
}

// oneLine makes an error message fit the one-line pipe protocol.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// openStdio opens containerd's FIFOs. stdout/stderr are opened for writing
// at once (containerd already holds the read ends); stdin is opened lazily.
func openStdio(ctx context.Context, spec Spec) (enclave.RunIO, func(), error) {
	var rio enclave.RunIO
	var closers []io.Closer
	closeAll := func() {
		for _, c := range closers {
			c.Close()
		}
	}
	for _, s := range []struct {
		path string
		dst  *io.Writer
	}{{spec.Stdout, &rio.Stdout}, {spec.Stderr, &rio.Stderr}} {
		if s.path == "" {
			continue
		}
		if u, err := url.Parse(s.path); err == nil && u.Scheme != "" {
			// A log URI (ctr run --log-uri), as runc's shim takes them:
			// file:// appends to that file; other schemes are refused.
			if u.Scheme != "file" || u.Path == "" {
				closeAll()
				return rio, nil, fmt.Errorf("stdio %q: only fifos and file:// log URIs are supported for enclave containers", s.path)
			}
			if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
				closeAll()
				return rio, nil, fmt.Errorf("log file %s: %w", u.Path, err)
			}
			f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
			if err != nil {
				closeAll()
				return rio, nil, fmt.Errorf("log file %s: %w", u.Path, err)
			}
			closers = append(closers, f)
			*s.dst = f
			continue
		}
		f, err := fifo.OpenFifo(ctx, s.path, unix.O_WRONLY, 0)
		if err != nil {
			closeAll()
			return rio, nil, fmt.Errorf("opening stdio fifo %s: %w", s.path, err)
		}
		closers = append(closers, f)
		*s.dst = f
	}
	if spec.Stdin != "" {
		f, err := fifo.OpenFifo(ctx, spec.Stdin, unix.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			closeAll()
			return rio, nil, fmt.Errorf("opening stdin fifo %s: %w", spec.Stdin, err)
		}
		closers = append(closers, f)
		rio.Stdin = f
	}
	return rio, closeAll, nil
}

// onBackendThread runs fn on a dedicated OS thread that has joined the
// network namespace at netns (so the forwarded ports' listeners fn creates
// live in the Pod's namespace) and the cgroup enclaveCgroup (so the QEMU
// process fn forks is born there). The thread is never returned to the Go
// scheduler, and it is kept alive for the launcher's lifetime: a child
// started from it (QEMU) has a parent-death signal, which Linux delivers
// when the forking *thread* exits.
func onBackendThread(netns, enclaveCgroup string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // deliberately never unlocked
		if unix.Gettid() == unix.Getpid() {
			// Never the main thread: cgroup v1 charges the process's
			// memory to its cgroup. Hold it while another thread does
			// the work (nitropod-launcher also locks it in init).
			errc <- onBackendThread(netns, enclaveCgroup, fn)
			runtime.UnlockOSThread()
			return
		}
		if err := joinNetNS(netns); err != nil {
			errc <- err
			return
		}
		if err := joinCgroupThread(enclaveCgroup, unix.Gettid()); err != nil {
			errc <- err
			return
		}
		errc <- fn()
		select {} // park: keep this thread (QEMU's parent) alive
	}()
	return <-errc
}

func joinNetNS(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening pod network namespace: %w", err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("joining pod network namespace %s: %w", path, err)
	}
	return nil
}

// cgroupRoot is where cgroupfs is mounted: the v1 hierarchies, or the
// unified (v2) hierarchy itself.
var cgroupRoot = "/sys/fs/cgroup"

// cgroupV2 says whether cgroupRoot is the unified (v2) hierarchy.
func cgroupV2() (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil {
		return false, fmt.Errorf("reading the cgroup mount %s: %w", cgroupRoot, err)
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}

// cgroupStarter is a backend that can start its processes directly in a
// cgroup v2 directory (qemu.Backend).
type cgroupStarter interface{ StartInCgroup(dir string) }

// placeBackend arranges for what the backend starts to be born in the
// enclave cgroup on cgroup v2, where a thread cannot join it
// (joinCgroupThread does it on v1). A backend that cannot leaves its
// processes in the launcher's cgroup.
func placeBackend(backend any, enclaveCgroup string) error {
	if enclaveCgroup == "" {
		return nil
	}
	v2, err := cgroupV2()
	if err != nil || !v2 {
		return err
	}
	dir := filepath.Join(cgroupRoot, enclaveCgroup)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("enclave cgroup %s does not exist in the cgroup v2 hierarchy %s", enclaveCgroup, cgroupRoot)
	}
	if cs, ok := backend.(cgroupStarter); ok {
		cs.StartInCgroup(dir)
	}
	return nil
}

// joinCgroupThread moves thread tid into cgroup path in every v1 hierarchy
// that has it (cgroup v1 moves single threads through the tasks file). On
// cgroup v2 it does nothing: there the backend starts its processes in the
// cgroup (placeBackend).
func joinCgroupThread(path string, tid int) error {
	if path == "" {
		return nil
	}
	if v2, err := cgroupV2(); err != nil || v2 {
		return err
	}
	des, err := os.ReadDir(cgroupRoot)
	if err != nil {
		return fmt.Errorf("listing cgroup hierarchies: %w", err)
	}
	seen := map[string]bool{}
	joined := 0
	for _, de := range des {
		dir, err := filepath.EvalSymlinks(filepath.Join(cgroupRoot, de.Name()))
		if err != nil || seen[dir] {
			continue
		}
		seen[dir] = true
		tasks := filepath.Join(dir, path, "tasks")
		if _, err := os.Stat(tasks); err != nil {
			continue
		}
		if err := os.WriteFile(tasks, []byte(strconv.Itoa(tid)), 0); err != nil {
			return fmt.Errorf("moving the enclave thread into %s: %w", tasks, err)
		}
		joined++
	}
	if joined == 0 {
		return fmt.Errorf("enclave cgroup %s exists in no cgroup v1 hierarchy under %s", path, cgroupRoot)
	}
	return nil
}
