package podnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// NS makes sockets in a network namespace. A namespace belongs to a
// thread, not to a Go process, so NS keeps a few goroutines locked to OS
// threads that joined it for listeners; a socket made there stays in the
// namespace wherever it is used afterwards. Dials visit the namespace on
// the caller's own thread (DialContext).
type NS struct {
	reqs chan func()
	done chan struct{}
	once sync.Once
	// pod and home are the Pod's namespace and the launcher's own, for
	// dials made by a thread that visits the Pod's namespace (see
	// DialContext); -1 without a Pod namespace.
	pod, home int
}

// NSWorkers is the number of threads kept in the namespace.
const NSWorkers = 4

// OpenNS joins the network namespace at path ("" is the caller's own: NS
// then makes its sockets directly).
func OpenNS(path string) (*NS, error) {
	if path == "" {
		return &NS{pod: -1, home: -1}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening the Pod network namespace: %w", err)
	}
	defer f.Close()
	n := &NS{reqs: make(chan func()), done: make(chan struct{}), pod: -1, home: -1}
	// The launcher's own namespace: that of a thread that never joined
	// another (the main thread's, by process).
	if n.home, err = unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("opening the launcher's network namespace: %w", err)
	}
	if n.pod, err = unix.Dup(int(f.Fd())); err != nil {
		unix.Close(n.home)
		return nil, fmt.Errorf("opening the Pod network namespace: %w", err)
	}
	unix.CloseOnExec(n.pod)
	errc := make(chan error, NSWorkers)
	for range NSWorkers {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				errc <- fmt.Errorf("joining the Pod network namespace %s: %w", path, err)
				return
			}
			errc <- nil
			for {
				select {
				case fn := <-n.reqs:
					fn()
				case <-n.done:
					return
				}
			}
		}()
	}
	for range NSWorkers {
		if err := <-errc; err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// Close ends the namespace's threads.
func (n *NS) Close() {
	if n.done != nil {
		n.once.Do(func() {
			close(n.done)
			unix.Close(n.pod)
			unix.Close(n.home)
		})
	}
}

func (n *NS) do(ctx context.Context, fn func()) error {
	if n.reqs == nil {
		fn()
		return nil
	}
	done := make(chan struct{})
	select {
	case n.reqs <- func() { fn(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return errors.New("the Pod network namespace was closed")
	}
	<-done
	return nil
}

// Do runs fn on a thread of the namespace: sockets fn makes are in it.
func (n *NS) Do(fn func()) error { return n.do(context.Background(), fn) }

// DialContext dials from the namespace. The calling goroutine's own thread
// visits the namespace while it makes the socket (no hand-over to a worker,
// which costs a thread wake-up per connect) and returns home; a thread that
// cannot return is never handed back to Go (it ends with the goroutine).
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if n.pod < 0 {
		return d.DialContext(ctx, network, addr)
	}
	runtime.LockOSThread()
	if err := unix.Setns(n.pod, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("joining the Pod network namespace: %w", err)
	}
	c, err := d.DialContext(ctx, network, addr)
	if unix.Setns(n.home, unix.CLONE_NEWNET) == nil {
		runtime.UnlockOSThread()
	}
	return c, err
}

// Listen listens in the namespace.
func (n *NS) Listen(network, addr string) (l net.Listener, err error) {
	if e := n.do(context.Background(), func() { l, err = net.Listen(network, addr) }); e != nil {
		return nil, e
	}
	return l, err
}

// ListenPacket opens a datagram socket in the namespace.
func (n *NS) ListenPacket(network, addr string) (c net.PacketConn, err error) {
	if e := n.do(context.Background(), func() { c, err = net.ListenPacket(network, addr) }); e != nil {
		return nil, e
	}
	return c, err
}

// PodAddr returns the namespace's first global IPv4 address (the Pod IP),
// or DefaultAddr when it has none.
func (n *NS) PodAddr() netip.Addr {
	addr := DefaultAddr
	_ = n.do(context.Background(), func() {
		ifs, err := net.Interfaces()
		if err != nil {
			return
		}
		for _, ifi := range ifs {
			if ifi.Flags&net.FlagLoopback != 0 || ifi.Flags&net.FlagUp == 0 {
				continue
			}
			as, _ := ifi.Addrs()
			for _, a := range as {
				if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && p.Addr().IsGlobalUnicast() {
					addr = p.Addr()
					return
				}
			}
		}
	})
	return addr
}
