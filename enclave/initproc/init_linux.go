package initproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave/agent"
)

// Main runs init and powers the enclave off; it never returns when it runs
// as PID 1. Run as any other process it reports that and returns 1.
func Main() int {
	if len(os.Args) > 1 && os.Args[1] == ExecStageArg {
		return execStage() // see secctx_linux.go
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "nitropod-init: must run as PID 1 inside an enclave (it is the enclave's init)")
		return 1
	}
	i := &initState{rooted: make(chan struct{})}
	i.run()
	i.powerOff()
	return 0
}

type initState struct {
	console io.Writer
	guest   *agent.Guest
	reaper  *reaper
	deliver *deliveryHandler // deliver_linux.go
	// rooted is closed once setup has switched to the image's root and
	// mounted /dev, /proc and /sys there: the network streams, which the
	// host may open as soon as the channel is up, wait for it (before,
	// /dev/net/tun could be missing for a moment).
	rooted chan struct{}
}

func (i *initState) logf(format string, args ...any) {
	w := i.console
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "nitropod-init: "+format+"\n", args...)
}

// stageError is a failure with the stage init was in.
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.stage + ": " + e.err.Error() }

func stage(name string, err error) error {
	if err == nil {
		return nil
	}
	return &stageError{name, err}
}

func (i *initState) run() {
	if err := i.boot(); err != nil {
		i.fail(err)
		return
	}
	proc, err := i.setup()
	if err != nil {
		i.fail(err)
		return
	}
	close(i.rooted)
	i.deliver = newDeliveryHandler(proc)
	i.guest.HandleDeliveries(i.deliver)
	i.startAttestationAPI(proc) // nsm_linux.go
	i.reaper = newReaper()
	i.guest.SetExecHandler(i.execHandler(proc)) // exec_linux.go
	if err := i.runApp(proc); err != nil {
		i.fail(err)
	}
}

// fail reports err to the console and, when the channel is up, to the host.
func (i *initState) fail(err error) {
	st := "booting"
	var se *stageError
	if errors.As(err, &se) {
		st, err = se.stage, se.err
	}
	i.logf("%s: %v", st, err)
	if i.guest != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = i.guest.Fail(ctx, st, err)
	}
}

// boot brings the bootstrap ramdisk to an open agent channel.
func (i *initState) boot() error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return stage("mounting "+m.dst, err)
		}
	}
	if c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		i.console = c
		_ = unix.Dup2(int(c.Fd()), 1)
		_ = unix.Dup2(int(c.Fd()), 2)
	}
	mods, err := Modules("/" + ramdisk.ModulesDir)
	if err != nil {
		return stage("loading kernel modules", err)
	}
	for _, m := range mods {
		if err := loadModule(m); err != nil {
			return stage("loading kernel modules", err)
		}
	}
	conn, err := openChannel()
	if err != nil {
		return stage("opening the agent channel", err)
	}
	g, err := agent.NewGuest(conn, agent.GuestConfig{Streams: i.netStreams()}) // net_linux.go
	if err != nil {
		return stage("opening the agent channel", err)
	}
	i.guest = g
	i.startNSM() // nsm_linux.go
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("loading %s: %w (check the module order in the blob set)", filepath.Base(path), err)
	}
	return nil
}

// openChannel finds the transport (see pickTransport), sends the heartbeat
// and returns the channel: the named virtio-serial port in emulation, a
// vsock connection to the launcher on Nitro.
func openChannel() (io.ReadWriteCloser, error) {
	t, err := waitTransport("/", time.Now, time.Sleep)
	if err != nil {
		return nil, err
	}
	if t.vsock {
		return dialVsockChannel(kernelVsock{})
	}
	return openPort(t.port)
}

func openPort(dev string) (io.ReadWriteCloser, error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	if err := heartbeat(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("heartbeat on %s: %w", dev, err)
	}
	return f, nil
}

// kernelVsock is the enclave kernel's AF_VSOCK.
type kernelVsock struct{}

func (kernelVsock) LocalCID() (uint32, error) { return vsock.ContextID() }

func (kernelVsock) Dial(cid, port uint32) (io.ReadWriteCloser, error) {
	return vsock.Dial(cid, port, nil)
}

// setup switches into the image and prepares its environment.
func (i *initState) setup() (*ramdisk.Process, error) {
	proc, err := ReadProcess("/" + ramdisk.ProcessPath)
	if err != nil {
		return nil, stage("reading the process description", err)
	}
	if err := setEgress(proc); err != nil { // net_linux.go
		return nil, stage("reading the egress allowlist", err)
	}
	if err := switchRoot("/" + ramdisk.RootfsDir); err != nil {
		return nil, stage("switching root to /"+ramdisk.RootfsDir, err)
	}
	if err := mountAll(); err != nil {
		return nil, stage("mounting filesystems", err)
	}
	if err := loopbackUp(); err != nil {
		return nil, stage("bringing up loopback", err)
	}
	host := proc.Hostname
	if host == "" {
		host = DefaultHostname
	}
	if err := unix.Sethostname([]byte(host)); err != nil {
		return nil, stage("setting the hostname", err)
	}
	_ = os.MkdirAll("/etc", 0o755)
	if err := os.WriteFile("/etc/hosts", []byte(Hosts(host)), 0o644); err != nil {
		return nil, stage("writing /etc/hosts", err)
	}
	return proc, nil
}

func switchRoot(root string) error {
	if _, err := os.Stat(root); err != nil {
		return fmt.Errorf("the image filesystem is missing: %w", err)
	}
	for _, m := range []string{"/proc", "/sys", "/dev"} {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", root, err)
	}
	if err := os.Chdir(root); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving %s to /: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return os.Chdir("/")
}

func mountAll() error {
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
		mode             os.FileMode
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", 0o755},
		{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	} {
		if err := os.MkdirAll(m.dst, m.mode); err != nil {
			return fmt.Errorf("creating %s: %w", m.dst, err)
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	// cgroups, as AWS's init mounts them; best effort (a kernel may lack v2).
	if err := os.MkdirAll("/sys/fs/cgroup", 0o755); err == nil {
		_ = unix.Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	}
	for name, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		_ = os.Symlink(target, name)
	}
	// The devpts instance's ptmx, so that ptys opened in the app work.
	os.Remove("/dev/ptmx")
	_ = os.Symlink("pts/ptmx", "/dev/ptmx")
	return nil
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("reading lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("setting lo up: %w", err)
	}
	return nil
}

// runApp waits for the host's start, runs the app, reaps, forwards signals
// and reports the exit status.
func (i *initState) runApp(proc *ramdisk.Process) error {
	st, err := i.guest.WaitStart(context.Background())
	if err != nil {
		return stage("waiting for the host", err)
	}
	delivered, err := i.deliver.startEnv()
	if err != nil {
		return stage("checking the delivered configuration", err)
	}
	// The host answers clock requests once it started the app (clock_linux.go).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := i.syncClock(ctx); err != nil && !errors.Is(err, agent.ErrNoFeature) {
		i.logf("setting the clock from the host's: %v", err)
	}
	cancel()
	go i.keepTime()
	env := append(Env(proc), delivered...)
	cwd := proc.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if err := os.MkdirAll(cwd, 0o755); err != nil {
		return stage("creating the working directory", err)
	}
	path, err := LookPath("/", proc.Args[0], env, cwd)
	if err != nil {
		return stage("starting the app", err)
	}

	var pipes [3][2]*os.File
	for n := range pipes {
		r, w, err := os.Pipe()
		if err != nil {
			return stage("starting the app", err)
		}
		pipes[n] = [2]*os.File{r, w}
		// Large pipes make large channel frames (see agent.CopyBufferSize).
		_, _ = unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	}
	childFiles := []uintptr{pipes[0][0].Fd(), pipes[1][1].Fd(), pipes[2][1].Fd()}

	groups := make([]uint32, len(proc.AdditionalGIDs))
	copy(groups, proc.AdditionalGIDs)
	pid, exited, err := i.reaper.spawn(func() (int, error) {
		return startApp(proc, path, env, cwd, childFiles, groups)
	})
	for n := range pipes {
		// The child's ends belong to the child now.
		if n == 0 {
			pipes[n][0].Close()
		} else {
			pipes[n][1].Close()
		}
	}
	if err != nil {
		return stage("starting the app", fmt.Errorf("executing %s: %w", path, err))
	}
	_ = i.guest.Started(pid)

	go func() {
		_, _ = io.CopyBuffer(pipes[0][1], st.Stdin, make([]byte, agent.CopyBufferSize))
		pipes[0][1].Close()
		st.Stdin.Close()
	}()
	var outWG sync.WaitGroup
	for n, w := range []io.WriteCloser{st.Stdout, st.Stderr} {
		outWG.Add(1)
		go func() {
			defer outWG.Done()
			_, _ = io.CopyBuffer(w, pipes[n+1][0], make([]byte, agent.CopyBufferSize))
		}()
	}
	go func() {
		for sig := range i.guest.Signals() {
			_ = unix.Kill(pid, unix.Signal(sig))
		}
	}()

	ws := <-exited
	// Drain the app's output; a leftover child holding the pipes open
	// must not keep the enclave alive.
	drained := make(chan struct{})
	go func() { outWG.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		pipes[1][0].Close()
		pipes[2][0].Close()
		<-drained
	}
	st.Stdout.Close()
	st.Stderr.Close()
	code, sig := Status(ws)
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := i.reportExit(ctx, code, sig); err != nil {
		i.logf("reporting the app's exit status %d: %v", code, err)
	}
	return nil
}

func forkExec(path string, args, env []string, cwd string, files []uintptr, uid, gid uint32, groups []uint32) (int, error) {
	attr := &syscall.SysProcAttr{
		Setsid:     true,
		Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups},
	}
	return syscall.ForkExec(path, args, &syscall.ProcAttr{Dir: cwd, Env: env, Files: files, Sys: attr})
}

func (i *initState) powerOff() {
	_ = unix.Kill(-1, unix.SIGKILL)
	unix.Sync()
	if i.guest != nil {
		i.guest.Close()
	}
	for {
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		time.Sleep(time.Second)
	}
}
