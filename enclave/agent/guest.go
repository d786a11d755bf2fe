package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Guest is init's end of the channel. It accepts the host's streams, answers
// hello, forwards TCP streams to 127.0.0.1 inside the enclave, and hands the
// app's start, stdio and signals to init.
type Guest struct {
	sess    *yamux.Session
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	fwd     bool
	streams map[string]func(net.Conn)

	mu      sync.Mutex
	ctrl    *yamux.Stream
	ctrlCh  chan struct{} // closed when ctrl is set and hello answered
	stdio   [3]*yamux.Stream
	stdioCh chan struct{} // closed when all three stdio streams arrived
	startCh chan struct{} // closed on start
	byeCh   chan struct{} // closed on bye
	signals chan int
	closed  chan struct{}
	once    map[string]*sync.Once
	wmu     sync.Mutex

	features []string   // named in the host's hello (clock.go)
	clockCh  chan int64 // the host's answers to clock requests
	clockMu  sync.Mutex // one clock request at a time

	nsm       *yamux.Stream // the host's NSM stream (nsm.go)
	nsmCh     chan struct{} // closed when nsm is set
	nsmOnce   sync.Once
	nsmMu     sync.Mutex // serialises NSM round trips
	nsmBroken bool

	execHandler ExecHandler     // exec.go
	deliverMu   sync.Mutex      // guards deliverH (deliver.go)
	deliverH    DeliveryHandler // set by HandleDeliveries
	deliverCh   chan struct{}   // closed when deliverH is set
	deliverOnce atomic.Bool     // one deliver stream per enclave
}

// GuestConfig configures NewGuest.
type GuestConfig struct {
	// Dial connects forward streams; nil dials with net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// AllowForward serves KindForward streams. Off in init: a forward
	// stream would let the host reach any port of the enclave's loopback
	// (docs/SECURITY.md); the enclave's network (enclave/podnet) carries
	// connections instead.
	AllowForward bool
	// Streams serve further stream kinds (the enclave's network); each
	// handler owns the stream and runs on its own goroutine.
	Streams map[string]func(net.Conn)
}

// NewGuest starts init's end of the channel over conn (after the heartbeat).
func NewGuest(conn io.ReadWriteCloser, cfg GuestConfig) (*Guest, error) {
	sess, err := yamux.Server(&coalescer{ReadWriteCloser: conn}, muxConfig())
	if err != nil {
		return nil, fmt.Errorf("starting channel: %w", err)
	}
	g := &Guest{
		sess:    sess,
		dial:    cfg.Dial,
		fwd:     cfg.AllowForward,
		streams: cfg.Streams,
		ctrlCh:  make(chan struct{}),
		stdioCh: make(chan struct{}),
		startCh: make(chan struct{}),
		byeCh:   make(chan struct{}),
		signals: make(chan int, 16),
		closed:  make(chan struct{}),
		once:    map[string]*sync.Once{},
		nsmCh:   make(chan struct{}),
		clockCh: make(chan int64, 1),

		deliverCh: make(chan struct{}),
	}
	for _, k := range []string{"ctrl", "stdio", "start", "bye"} {
		g.once[k] = new(sync.Once)
	}
	if g.dial == nil {
		var d net.Dialer
		g.dial = d.DialContext
	}
	go g.accept()
	return g, nil
}

func (g *Guest) accept() {
	defer close(g.closed)
	for {
		s, err := g.sess.AcceptStream()
		if err != nil {
			return
		}
		go g.handle(s)
	}
}

func (g *Guest) handle(s *yamux.Stream) {
	var h Header
	_ = s.SetReadDeadline(time.Now().Add(time.Minute))
	if err := ReadFrame(s, &h); err != nil {
		s.Close()
		return
	}
	_ = s.SetReadDeadline(time.Time{})
	switch h.Kind {
	case KindControl:
		g.control(s)
	case KindStdin, KindStdout, KindStderr:
		i := map[string]int{KindStdin: 0, KindStdout: 1, KindStderr: 2}[h.Kind]
		g.mu.Lock()
		if g.stdio[i] != nil {
			g.mu.Unlock()
			s.Close()
			return
		}
		g.stdio[i] = s
		all := g.stdio[0] != nil && g.stdio[1] != nil && g.stdio[2] != nil
		g.mu.Unlock()
		if all {
			g.once["stdio"].Do(func() { close(g.stdioCh) })
		}
	case KindForward:
		if !g.fwd {
			s.Close()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := g.dial(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(h.Port))))
		cancel()
		if err != nil {
			s.Close()
			return
		}
		Splice(s, c)
	case KindNSM:
		g.nsmStream(s)
	case KindExec:
		g.execStream(s)
	case KindDeliver:
		g.deliverStream(s)
	default:
		if fn := g.streams[h.Kind]; fn != nil {
			fn(s)
			return
		}
		s.Close()
	}
}

func (g *Guest) control(s *yamux.Stream) {
	g.mu.Lock()
	if g.ctrl != nil {
		g.mu.Unlock()
		s.Close()
		return
	}
	g.ctrl = s
	g.mu.Unlock()
	for {
		var m Message
		if err := ReadFrame(s, &m); err != nil {
			return
		}
		switch m.Type {
		case MsgHello:
			if m.Version != Version {
				_ = g.send(Message{Type: MsgError, Stage: "connecting",
					Error: fmt.Sprintf("enclave init speaks agent protocol %d, the host %d: rebuild the EIF with this nitropod", Version, m.Version)})
				continue
			}
			g.mu.Lock()
			g.features = append([]string(nil), m.Features...)
			g.mu.Unlock()
			_ = g.send(Message{Type: MsgHello, Version: Version})
			g.once["ctrl"].Do(func() { close(g.ctrlCh) })
		case MsgClock:
			select {
			case g.clockCh <- m.Time:
			default: // nobody asked: drop
			}
		case MsgStart:
			g.once["start"].Do(func() { close(g.startCh) })
		case MsgSignal:
			select {
			case g.signals <- m.Signal:
			default: // a flood of signals: drop, as the kernel coalesces them
			}
		case MsgBye:
			g.once["bye"].Do(func() { close(g.byeCh) })
		}
	}
}

func (g *Guest) send(m Message) error {
	g.mu.Lock()
	s := g.ctrl
	g.mu.Unlock()
	if s == nil {
		return errors.New("no control stream")
	}
	g.wmu.Lock()
	defer g.wmu.Unlock()
	return WriteFrame(s, m)
}

// ErrClosed is returned when the host closed the channel.
var ErrClosed = errors.New("agent channel closed by the host")

func (g *Guest) wait(ctx context.Context, ch <-chan struct{}) error {
	select {
	case <-ch:
		return nil
	case <-g.closed:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// GuestStdio are init's ends of the app's standard streams.
type GuestStdio struct {
	Stdin          io.ReadCloser
	Stdout, Stderr io.WriteCloser
}

// WaitStart waits until the host asked to start the app and its standard
// streams are open.
func (g *Guest) WaitStart(ctx context.Context) (GuestStdio, error) {
	for _, ch := range []chan struct{}{g.ctrlCh, g.startCh, g.stdioCh} {
		if err := g.wait(ctx, ch); err != nil {
			return GuestStdio{}, fmt.Errorf("waiting for the host to start the app: %w", err)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return GuestStdio{Stdin: g.stdio[0], Stdout: g.stdio[1], Stderr: g.stdio[2]}, nil
}

// Started reports that the app runs as pid.
func (g *Guest) Started(pid int) error {
	return g.send(Message{Type: MsgStarted, PID: pid})
}

// Signals delivers the signal numbers the host sends for the app.
func (g *Guest) Signals() <-chan int { return g.signals }

// Exit reports the app's end (code, and the signal that killed it or 0)
// and waits until the host acknowledged it or ctx ended.
func (g *Guest) Exit(ctx context.Context, code, signal int) error {
	if err := g.wait(ctx, g.ctrlCh); err != nil {
		return fmt.Errorf("reporting exit status: %w", err)
	}
	if err := g.send(Message{Type: MsgExit, Code: code, Signal: signal}); err != nil {
		return fmt.Errorf("reporting exit status: %w", err)
	}
	return g.wait(ctx, g.byeCh)
}

// Fail reports a failure before the app started (stage names what init was
// doing) and waits until the host acknowledged it or ctx ended.
func (g *Guest) Fail(ctx context.Context, stage string, cause error) error {
	if err := g.wait(ctx, g.ctrlCh); err != nil {
		return fmt.Errorf("reporting failure: %w", err)
	}
	if err := g.send(Message{Type: MsgError, Stage: stage, Error: cause.Error()}); err != nil {
		return fmt.Errorf("reporting failure: %w", err)
	}
	return g.wait(ctx, g.byeCh)
}

// Close closes the channel.
func (g *Guest) Close() error { return g.sess.Close() }
