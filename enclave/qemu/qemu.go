// Package qemu is the emulation Backend: it boots an EIF's kernel, command
// line and concatenated ramdisks with qemu-system-x86_64 (TCG by default,
// KVM when configured), so an enclave runs without Nitro hardware. The
// kernel boots unpacked when it can (see Config.KernelCache): the same code,
// without minutes of TCG time spent decompressing it over many boots.
//
// The agent channel is a virtio-serial port named agent.PortName whose host
// end is a unix socket the backend listens on; QEMU connects to it at start.
// The Nitro boot heartbeat is emulated on that port: init's first byte is
// 0xB7 and the backend echoes it, as nitro-cli does on vsock port 9000, so
// Boot returns at the same point of the boot on both backends. The console
// (ttyS0) is attached only in debug mode, as on Nitro. QEMU runs in its own
// process group with a parent-death signal, so it never outlives its owner;
// the kernel and ramdisk files it boots from live in a private directory
// under Config.WorkDir that Terminate removes.
package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/enclave/nsm"
)

// DefaultBinary is the QEMU executable looked up on PATH.
const DefaultBinary = "qemu-system-x86_64"

// Config configures the backend.
type Config struct {
	// Binary is the QEMU executable; "" looks up DefaultBinary on PATH.
	Binary string
	// Accel is "tcg" (default) or "kvm".
	Accel string
	// Machine is the QEMU machine type: "microvm" (default) or "pc".
	Machine string
	// WorkDir holds each enclave's private directory (kernel, ramdisk,
	// channel socket); "" is os.TempDir().
	WorkDir string
	// BootTimeout bounds the time from QEMU's start to init's heartbeat,
	// over all attempts; 0 means 3 minutes (Nitro's limit is 180 s too).
	BootTimeout time.Duration
	// BootAttempts is how many times a guest that sends no heartbeat is
	// started afresh, sharing BootTimeout; 0 means 2 under TCG and 1 under
	// KVM. Under heavy host contention an emulated guest very rarely hangs
	// early in boot (about 1 in 160 boots seen on a loaded 2-core machine);
	// a second boot of the same measured image is indistinguishable to the
	// app and keeps a Pod from failing for it.
	BootAttempts int
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
	// KernelCache holds uncompressed kernels for faster boots (see
	// kernel.go); "" is $XDG_CACHE_HOME/nitropod/kernels (or
	// ~/.cache/nitropod/kernels), "-" boots the EIF's bzImage as it is.
	KernelCache string
	// Trace, when set, is called at the steps of Boot (TraceValidated,
	// TraceStarted, TraceHeartbeat), for measurements.
	Trace func(step string)
	// AttestationDir holds the node's emulation CA, which signs the
	// emulated NSM's attestation documents (enclave/nsm); "" is
	// $XDG_STATE_HOME/nitropod/attestation (~/.local/state/…).
	AttestationDir string
}

// Boot steps passed to Config.Trace.
const (
	TraceValidated = "eif validated and extracted"
	TraceStarted   = "qemu started"
	TraceHeartbeat = "heartbeat"
	TraceRetry     = "no heartbeat: booting again"
)

// Backend boots EIFs in QEMU.
type Backend struct {
	cfg Config
	// cgroupDir is the cgroup v2 directory QEMU is started in (see
	// StartInCgroup); "" is the caller's cgroup.
	cgroupDir string
}

var nextCID atomic.Uint32

func init() { nextCID.Store(15) }

// New returns a QEMU backend.
func New(cfg Config) (*Backend, error) {
	switch cfg.Accel {
	case "":
		cfg.Accel = "tcg"
	case "tcg", "kvm":
	default:
		return nil, fmt.Errorf("qemu accelerator %q is not supported: use tcg or kvm", cfg.Accel)
	}
	switch cfg.Machine {
	case "":
		cfg.Machine = "microvm"
	case "microvm", "pc":
	default:
		return nil, fmt.Errorf("qemu machine %q is not supported: use microvm or pc", cfg.Machine)
	}
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	if cfg.AttestationDir == "" {
		cfg.AttestationDir = DefaultAttestationDir()
	}
	if cfg.WorkDir == "" {
		cfg.WorkDir = os.TempDir()
	}
	if cfg.KernelCache == "" {
		cfg.KernelCache = "-"
		if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
			cfg.KernelCache = filepath.Join(d, "nitropod", "kernels")
		} else if h, err := os.UserHomeDir(); err == nil {
			cfg.KernelCache = filepath.Join(h, ".cache", "nitropod", "kernels")
		}
	}
	if cfg.BootAttempts == 0 {
		cfg.BootAttempts = 2
		if cfg.Accel == "kvm" {
			cfg.BootAttempts = 1
		}
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 3 * time.Minute
	}
	return &Backend{cfg: cfg}, nil
}

// CheckMemory applies nitro-cli's rule: the enclave needs at least 4× the
// EIF's size, and at least nitropod.MinEnclaveMemoryMiB.
func CheckMemory(memMiB int, eifSize int64) error {
	need := (4*eifSize + 1<<20 - 1) >> 20
	if need < nitropod.MinEnclaveMemoryMiB {
		need = nitropod.MinEnclaveMemoryMiB
	}
	if int64(memMiB) < need {
		return fmt.Errorf("enclave memory %d MiB is too small for a %.1f MiB EIF: an enclave needs at least 4× the EIF size and at least %d MiB, so give it at least %d MiB",
			memMiB, float64(eifSize)/(1<<20), nitropod.MinEnclaveMemoryMiB, need)
	}
	return nil
}

// emulationHeadroomMiB is memory for init, the app and the kernel's own
// allocations on top of the boot-time needs (a busybox EIF failed at 93 MiB
// and ran at 96 MiB; this leaves a margin).
const emulationHeadroomMiB = 48

// checkEmulatedMemory refuses an enclave too small to boot its kernel under
// emulation, which would otherwise hang until the boot timeout: the kernel
// needs its bzImage init_size while booting and the ramdisks are held twice
// while they unpack (Debian's kernel needs far more than AWS's).
func checkEmulatedMemory(ef *eif.File, memMiB int) error {
	ks, _ := ef.First(eif.SectionKernel)
	hdr := make([]byte, 0x264)
	// A kernel shorter than a bzImage header is not a bzImage: QEMU will say so.
	n, _ := ef.Data(ks).ReadAt(hdr, 0)
	if n < len(hdr) || string(hdr[0x202:0x206]) != "HdrS" || binary.LittleEndian.Uint16(hdr[0x206:]) < 0x20a {
		return nil
	}
	initSize := int64(binary.LittleEndian.Uint32(hdr[0x260:]))
	var ramdisks int64
	for _, s := range ef.Sections {
		if s.Type == eif.SectionRamdisk {
			ramdisks += s.Size
		}
	}
	need := (initSize+2*ramdisks+(1<<20)-1)>>20 + emulationHeadroomMiB
	if int64(memMiB) < need {
		return fmt.Errorf("enclave memory %d MiB is too small to boot this EIF in emulation: its kernel needs %d MiB while booting and its ramdisks %d MiB while they unpack, so give it at least %d MiB",
			memMiB, initSize>>20, (2*ramdisks)>>20, need)
	}
	return nil
}

// Boot validates the EIF and the request, starts QEMU and returns after
// init's heartbeat.
func (b *Backend) Boot(ctx context.Context, req enclave.Request) (enclave.Enclave, error) {
	per := b.cfg.BootTimeout / time.Duration(b.cfg.BootAttempts)
	for attempt := 1; ; attempt++ {
		e, err := b.boot(ctx, req, per)
		if err == nil || attempt >= b.cfg.BootAttempts || !errors.Is(err, errBootTimeout) || ctx.Err() != nil {
			if err != nil && attempt > 1 {
				err = fmt.Errorf("after %d boot attempts: %w", attempt, err)
			}
			return e, err
		}
		b.trace(TraceRetry)
	}
}

// errBootTimeout marks a boot that ran out of its own time (not the
// caller's): the guest hung, and booting it again may succeed.
var errBootTimeout = errors.New("boot timed out")

func (b *Backend) boot(ctx context.Context, req enclave.Request, timeout time.Duration) (_ enclave.Enclave, err error) {
	if req.CPUs < 1 {
		return nil, fmt.Errorf("enclave needs at least 1 vCPU, got %d", req.CPUs)
	}
	bin, err := exec.LookPath(b.cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("qemu executable %q not found (install qemu-system-x86, e.g. `make deps`, or configure the qemu binary path): %w", b.cfg.Binary, err)
	}
	f, err := os.Open(req.EIFPath)
	if err != nil {
		return nil, fmt.Errorf("opening eif: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening eif: %w", err)
	}
	if err := CheckMemory(req.MemoryMiB, fi.Size()); err != nil {
		return nil, err
	}
	ef, err := eif.Open(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("eif %s is not a valid enclave image file: %w", req.EIFPath, err)
	}
	rep, err := ef.Verify()
	if err != nil {
		return nil, fmt.Errorf("eif %s is corrupt: %w", req.EIFPath, err)
	}

	if err := checkEmulatedMemory(ef, req.MemoryMiB); err != nil {
		return nil, err
	}
	dev, err := b.newNSM(req, rep.Measurements)
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp(b.cfg.WorkDir, "nitropod-qemu-")
	if err != nil {
		return nil, fmt.Errorf("creating enclave work directory: %w", err)
	}
	e := &qemuEnclave{dir: dir, done: make(chan struct{}), nsm: dev}
	defer func() {
		if err != nil {
			_ = e.Terminate(context.Background())
		}
	}()
	kernel := filepath.Join(dir, "kernel")
	initrd := filepath.Join(dir, "initrd")
	if err := extract(ef, kernel, initrd); err != nil {
		return nil, err
	}
	bootKernel := kernel
	if b.cfg.KernelCache != "-" {
		// Best effort: a kernel that cannot be unpacked boots as it is.
		if k, err := directKernel(b.cfg.KernelCache, kernel); err == nil {
			bootKernel = k
		}
	}
	b.trace(TraceValidated)
	sock := filepath.Join(dir, "agent.sock")
	if len(sock) >= maxSocketPath {
		// A unix socket path is limited to 108 bytes: use a short private
		// directory for the socket alone.
		sdir, err := os.MkdirTemp("", "nitropod-")
		if err != nil {
			return nil, fmt.Errorf("creating agent socket directory: %w", err)
		}
		e.sockDir = sdir
		sock = filepath.Join(sdir, "agent.sock")
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening for the agent channel: %w", err)
	}
	defer l.Close()

	args := b.args(req, bootKernel, initrd, rep.Cmdline, sock)
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = sysProcAttr()
	cmd.Stdin = nil
	if req.Debug && req.Console != nil {
		cmd.Stdout = req.Console
	}
	e.stderr = &tailBuffer{max: 8 << 10}
	cmd.Stderr = e.stderr
	release, err := intoCgroup(cmd, b.cgroupDir)
	if err != nil {
		return nil, err
	}
	err = cmd.Start()
	release()
	if err != nil {
		return nil, fmt.Errorf("starting qemu: %w", err)
	}
	e.cmd = cmd
	b.trace(TraceStarted)
	e.cid = req.CID
	if e.cid == 0 {
		e.cid = nextCID.Add(1)
	}
	go func() {
		e.waitErr = cmd.Wait()
		close(e.done)
	}()

	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stop := context.AfterFunc(bctx, func() { l.Close() })
	defer stop()
	go func() {
		select {
		case <-e.done:
			l.Close()
		case <-bctx.Done():
		}
	}()
	conn, err := l.AcceptUnix()
	if err != nil {
		return nil, e.bootErr(bctx, "qemu did not connect the agent channel", err)
	}
	e.conn = conn
	hb := make([]byte, 1)
	stopRead := context.AfterFunc(bctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	_, err = io.ReadFull(conn, hb)
	stopRead()
	if err != nil {
		return nil, e.bootErr(bctx, "enclave init sent no heartbeat", err)
	}
	if hb[0] != agent.HeartbeatByte {
		return nil, fmt.Errorf("enclave init sent heartbeat byte %#x, want %#x", hb[0], agent.HeartbeatByte)
	}
	b.trace(TraceHeartbeat)
	_ = conn.SetReadDeadline(time.Time{})
	if _, err := conn.Write(hb); err != nil {
		return nil, e.bootErr(bctx, "answering the heartbeat", err)
	}
	// QEMU has read the kernel and ramdisk long ago: drop the copies.
	os.Remove(kernel)
	os.Remove(initrd)
	return e, nil
}

func (b *Backend) trace(step string) {
	if b.cfg.Trace != nil {
		b.cfg.Trace(step)
	}
}

func (b *Backend) args(req enclave.Request, kernel, initrd, cmdline, sock string) []string {
	a := []string{
		"-accel", b.cfg.Accel,
		"-M", b.cfg.Machine,
		"-smp", strconv.Itoa(req.CPUs),
		"-m", strconv.Itoa(req.MemoryMiB),
		"-nographic", "-nodefaults", "-no-reboot", "-no-user-config",
		"-kernel", kernel, "-initrd", initrd, "-append", cmdline,
		"-chardev", "socket,id=agent,path=" + sock,
	}
	if b.cfg.Accel == "kvm" {
		a = append(a, "-cpu", "host")
	}
	if b.cfg.Machine == "microvm" {
		a = append(a, "-device", "virtio-serial-device")
	} else {
		a = append(a, "-device", "virtio-serial-pci")
	}
	a = append(a, "-device", "virtserialport,chardev=agent,name="+agent.PortName)
	if req.Debug && req.Console != nil {
		a = append(a, "-serial", "stdio")
	} else {
		a = append(a, "-serial", "none")
	}
	return append(a, b.cfg.ExtraArgs...)
}

// extract writes the EIF's kernel and its ramdisks, concatenated in order.
func extract(ef *eif.File, kernel, initrd string) error {
	ks, _ := ef.First(eif.SectionKernel)
	if err := writeFile(kernel, ef.Data(ks)); err != nil {
		return fmt.Errorf("extracting the eif kernel: %w", err)
	}
	var rs []io.Reader
	for _, s := range ef.Sections {
		if s.Type == eif.SectionRamdisk {
			rs = append(rs, ef.Data(s))
		}
	}
	if err := writeFile(initrd, io.MultiReader(rs...)); err != nil {
		return fmt.Errorf("extracting the eif ramdisks: %w", err)
	}
	return nil
}

func writeFile(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// maxSocketPath is the longest unix socket path (sun_path is 108 bytes).
const maxSocketPath = 108

type qemuEnclave struct {
	dir     string
	sockDir string // set when the socket could not live in dir
	cmd     *exec.Cmd
	cid     uint32
	stderr  *tailBuffer

	conn   *net.UnixConn
	dialed atomic.Bool
	nsm    *nsm.Device // the emulated NSM (nsm.go)

	done    chan struct{}
	waitErr error

	termOnce sync.Once
}

func (e *qemuEnclave) ID() string {
	if e.cmd == nil || e.cmd.Process == nil {
		return ""
	}
	return strconv.Itoa(e.cmd.Process.Pid)
}

func (e *qemuEnclave) CID() uint32 { return e.cid }

func (e *qemuEnclave) Dial(ctx context.Context) (net.Conn, error) {
	if !e.dialed.CompareAndSwap(false, true) {
		return nil, errors.New("the agent channel of this enclave was already dialled")
	}
	return e.conn, nil
}

func (e *qemuEnclave) Done() <-chan struct{} { return e.done }

// Terminate kills QEMU's process group, waits for it and removes the work
// directory.
func (e *qemuEnclave) Terminate(ctx context.Context) error {
	var err error
	e.termOnce.Do(func() {
		if e.cmd != nil && e.cmd.Process != nil {
			killGroup(e.cmd.Process.Pid)
			select {
			case <-e.done:
			case <-ctx.Done():
				err = fmt.Errorf("waiting for qemu to exit: %w", ctx.Err())
			}
		}
		if e.conn != nil {
			e.conn.Close()
		}
		if rerr := os.RemoveAll(e.dir); rerr != nil && err == nil {
			err = fmt.Errorf("removing enclave work directory: %w", rerr)
		}
		if e.sockDir != "" {
			os.RemoveAll(e.sockDir)
		}
	})
	return err
}

// stoppedErr explains a QEMU that exited during boot: its wait error
// (wrapped) or, when it exited with status 0 (the guest powered off or
// rebooted, e.g. after a kernel panic with panic=-1), that fact, never a
// formatted nil; then QEMU's stderr, or a hint to see the console.
func stoppedErr(what string, waitErr error, stderr string) error {
	cause := errQEMUExitedCleanly
	if waitErr != nil {
		cause = fmt.Errorf("qemu exited: %w", waitErr)
	}
	if stderr != "" {
		return fmt.Errorf("%s: the enclave stopped during boot (%w): %s", what, cause, stderr)
	}
	return fmt.Errorf("%s: the enclave stopped during boot (%w); boot it in debug mode to see its console", what, cause)
}

// errQEMUExitedCleanly is the cause of a boot that ended with QEMU's exit
// status 0.
var errQEMUExitedCleanly = errors.New("qemu exited with status 0: the guest shut down or rebooted, for example after a kernel panic or an init that exited")

// bootErr explains a boot that did not reach the heartbeat.
func (e *qemuEnclave) bootErr(ctx context.Context, what string, err error) error {
	// A closed channel usually means QEMU is exiting: give it a moment so
	// that its exit status and message can be reported.
	timer := time.NewTimer(2 * time.Second)
	defer timer.Stop()
	select {
	case <-e.done:
	case <-ctx.Done():
	case <-timer.C:
	}
	select {
	case <-e.done:
		return stoppedErr(what, e.waitErr, strings.TrimSpace(e.stderr.String()))
	default:
	}
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%s within the boot timeout; boot it in debug mode to see its console: %w (%w)", what, errBootTimeout, ctx.Err())
		}
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	return fmt.Errorf("%s: %w", what, err)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b.Write(p)
	if over := t.b.Len() - t.max; over > 0 {
		t.b.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.b.String()
}
