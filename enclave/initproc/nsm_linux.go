package initproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave/nsm"
)

// nsmMode is /dev/nsm's mode: the NSM is meant for every process in the
// enclave, whatever user the app runs as (e.g. uid 33 for nginx).
const nsmMode = 0o666

// startNSM provides /dev/nsm (called in boot, after the blob set's modules
// are loaded and the agent channel is open). On Nitro the blob set's nsm.ko
// has registered the misc device "nsm": init makes sure the node exists,
// with mode 0666. In emulation (no nsm driver, cuse.ko loaded) init serves
// /dev/nsm itself through CUSE and forwards each request to the host's
// emulated NSM over the agent channel. A failure is logged, not fatal: the
// app runs, and only its NSM calls fail.
func (i *initState) startNSM() {
	ok, err := ensureNSMNode("/dev", "/sys", unix.Mknod)
	if ok || err != nil {
		if err != nil {
			i.logf("providing /dev/nsm: %v", err)
		}
		return
	}
	if _, err := os.Stat("/dev/cuse"); err != nil {
		i.logf("no NSM driver and no /dev/cuse: the enclave has no /dev/nsm")
		return
	}
	if err := i.serveCUSE(); err != nil {
		i.logf("serving the emulated /dev/nsm: %v", err)
	}
}

// ensureNSMNode creates dev/nsm (mode 0666) for the nsm misc device when
// sys/class/misc/nsm exists; it reports whether the driver is there.
func ensureNSMNode(dev, sys string, mknod func(path string, mode uint32, dev int) error) (bool, error) {
	b, err := os.ReadFile(filepath.Join(sys, "class", "misc", "nsm", "dev"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("reading the nsm device number: %w", err)
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return true, fmt.Errorf("nsm device number %q is not MAJOR:MINOR", strings.TrimSpace(string(b)))
	}
	node := filepath.Join(dev, "nsm")
	fi, err := os.Lstat(node)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := mknod(node, unix.S_IFCHR|nsmMode, int(unix.Mkdev(uint32(ma), uint32(mi)))); err != nil && !errors.Is(err, os.ErrExist) {
			return true, fmt.Errorf("creating %s: %w", node, err)
		}
	case err != nil:
		return true, fmt.Errorf("checking %s: %w", node, err)
	case fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice == 0:
		return true, fmt.Errorf("%s exists and is not a character device", node)
	}
	// mknod honours the umask, and a devtmpfs node is 0600: set the mode.
	if err := os.Chmod(node, nsmMode); err != nil {
		return true, fmt.Errorf("setting %s mode: %w", node, err)
	}
	return true, nil
}

// serveCUSE registers /dev/nsm with CUSE, waits until the node exists and
// serves it in the background.
func (i *initState) serveCUSE() error {
	f, err := os.OpenFile("/dev/cuse", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	forward := func(req []byte) []byte {
		if i.guest == nil {
			return nsm.ErrorResponse(nsm.InternalError)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := i.guest.NSM(ctx, req)
		if err != nil {
			i.logf("emulated NSM: %v", err)
			return nsm.ErrorResponse(nsm.InternalError)
		}
		return resp
	}
	ready := make(chan error, 1)
	go func() {
		err := cuseLoop(f, forward, ready)
		i.logf("emulated /dev/nsm stopped: %v", err)
	}()
	select {
	case err := <-ready:
		if err != nil {
			return err
		}
	case <-time.After(10 * time.Second):
		return errors.New("CUSE did not answer CUSE_INIT")
	}
	for range 500 {
		if _, err := os.Stat("/dev/nsm"); err == nil {
			return os.Chmod("/dev/nsm", nsmMode)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New("/dev/nsm did not appear after CUSE registered it")
}

// cuseLoop reads CUSE requests from f until it fails; ready gets the
// outcome of CUSE_INIT. Ioctls run in their own goroutines (the NSM
// forwarding serialises them), so a slow one never holds up an open.
func cuseLoop(f *os.File, forward func([]byte) []byte, ready chan<- error) error {
	buf := make([]byte, 256<<10) // above FUSE_MIN_READ_BUFFER and any NSM ioctl
	inited := false
	write := func(b []byte) { _, _ = f.Write(b) }
	for {
		n, err := f.Read(buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOENT) {
				continue // ENOENT: the request was interrupted while read
			}
			if !inited {
				ready <- err
			}
			return fmt.Errorf("reading /dev/cuse: %w", err)
		}
		in, err := parseFuseIn(append([]byte(nil), buf[:n]...))
		if err != nil {
			continue
		}
		switch in.opcode {
		case opCuseInit:
			b, err := cuseInitReply(in)
			if err != nil {
				write(reply(in.unique, unix.EPROTO))
				ready <- err
				return err
			}
			write(b)
			if !inited {
				inited = true
				ready <- nil
			}
		case opOpen:
			write(openReply(in))
		case opRelease, opFlush:
			write(reply(in.unique, 0))
		case opInterrupt:
			// no reply; the ioctl it names finishes on its own
		case opIoctl:
			st := nsmIoctl(in)
			if st.reply != nil {
				write(st.reply)
				continue
			}
			go func() { write(st.finish(forward(st.request))) }()
		default:
			write(reply(in.unique, unix.ENOSYS))
		}
	}
}

// startAttestationAPI serves the attestation HTTP API on the enclave's
// 127.0.0.1 (after the loopback is up), with /dev/nsm; see attestapi.go.
func (i *initState) startAttestationAPI(proc *ramdisk.Process) {
	port, err := attestationPort(proc.AttestationPort, ramdisk.DefaultAttestationPort)
	if err != nil {
		i.logf("attestation API: %v", err)
		return
	}
	if port == 0 {
		return
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		i.logf("attestation API: %v", err)
		return
	}
	var mu sync.Mutex
	var cl *nsm.Client
	call := func(req []byte) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if cl == nil {
			c, err := nsm.Open(nsm.DevicePath)
			if err != nil {
				return nil, err
			}
			cl = c
		}
		return cl.Call(req)
	}
	srv := &http.Server{Handler: attestationHandler(call), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	go func() { _ = srv.Serve(l) }()
}
