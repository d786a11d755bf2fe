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
// threads that joined it; a socket made there stays in the namespace
// wherever it is used afterwards. A dial occupies its thread until the
// connect finished, so Workers bound the connects in flight.
type NS struct {
	reqs chan func()
	done chan struct{}
	once sync.Once
}

// NSWorkers is the number of threads in the namespace (connects in flight).
const NSWorkers = 64

// OpenNS joins the network namespace at path ("" is the caller's own: NS
// then makes its sockets directly).
func OpenNS(path string) (*NS, error) {
	if path == "" {
		return &NS{}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening the Pod network namespace: %w", err)
	}
	defer f.Close()
	n := &NS{reqs: make(chan func()), done: make(chan struct{})}
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
		n.once.Do(func() { close(n.done) })
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

// DialContext dials from the namespace.
func (n *NS) DialContext(ctx context.Context, network, addr string) (c net.Conn, err error) {
	if e := n.do(ctx, func() {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
	}); e != nil {
		return nil, e
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
