package enclave

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/enclave/podnet"
)

// PortMapping publishes an enclave TCP port on a host address.
type PortMapping struct {
	// HostAddr is the host listen address, e.g. "127.0.0.1:8080"
	// (port 0 picks a free one; see Session.Published).
	HostAddr string
	// EnclavePort is the TCP port inside the enclave (on its 127.0.0.1).
	EnclavePort uint16
}

// RunIO connects a running app to the host.
type RunIO struct {
	// Stdin is copied to the app's stdin; nil gives the app an empty stdin.
	Stdin io.Reader
	// Stdout and Stderr receive the app's output; nil discards it.
	Stdout, Stderr io.Writer
	// Publish lists the ports to forward; each listener is bound before the
	// enclave boots, so a taken port fails early. Connections reach the app
	// through the enclave's network (enclave/podnet) with the client's
	// address as their source.
	Publish []PortMapping
	// PublishUDP lists UDP ports to publish the same way (the app sees each
	// client's address).
	PublishUDP []PortMapping
	// Net configures the enclave's network (enclave/podnet): where egress
	// leaves from, the enclave's address, whether every listening port is
	// published. nil takes the defaults (the caller's namespace, no
	// automatic listeners); then a network that cannot come up (a blob set
	// without tun) is only reported through Progress, unless ports are
	// published.
	Net *podnet.HostConfig
	// Signals are forwarded to the app by Run. SIGKILL, a second SIGTERM or
	// SIGINT, or GracePeriod passing after the first one, terminate the enclave.
	Signals <-chan os.Signal
	// GracePeriod is how long Run waits after forwarding SIGTERM/SIGINT
	// before it terminates the enclave; 0 means 10 s.
	GracePeriod time.Duration
	// Progress, when set, is called as the run advances with one of the
	// Stage* values.
	Progress func(stage string)
	// Ready, when set, is called once the app has started.
	Ready func()
	// Deliver, when set, is called once init answered and before the app
	// starts, to deliver configuration (agent.Client.Deliver); an error
	// fails the start.
	Deliver func(ctx context.Context, c *agent.Client) error
	// Stats, when set, receives the enclave's CPU and memory use each time
	// init reports it (every few seconds while the app runs).
	Stats func(agent.Stats)
}

// Stages passed to RunIO.Progress.
const (
	StageBooting = "booting enclave"
	StageBooted  = "enclave booted"
	StageStarted = "app started"
)

// ExitStatus is how the app ended.
type ExitStatus struct {
	// Code is the exit code: the app's own, or 128+Signal when a signal
	// killed it (or the enclave was terminated: 137).
	Code int
	// Signal is the signal that killed the app, or 0.
	Signal syscall.Signal
	// OOMKilled: the enclave kernel's OOM killer killed the app.
	OOMKilled bool
}

// terminated is the status of an app whose enclave was terminated.
var terminated = ExitStatus{Code: 128 + int(syscall.SIGKILL), Signal: syscall.SIGKILL}

// Session is one app running in an enclave, from Start until Wait returns.
type Session struct {
	enc       Enclave
	cl        *agent.Client
	listeners []net.Listener
	udp       []net.PacketConn
	net       *podnet.Host

	ioWG sync.WaitGroup // stdout and stderr copies

	done   chan struct{}
	status ExitStatus
	err    error

	termOnce sync.Once
	termErr  error
	killed   atomic.Bool
}

// Start boots the enclave described by req with b, connects to its init,
// starts the app and returns once it runs (after rio.Ready). ctx bounds
// only the start; the session lives until Wait returns. On error nothing
// is left running.
func Start(ctx context.Context, b Backend, req Request, rio RunIO) (_ *Session, err error) {
	progress := rio.Progress
	if progress == nil {
		progress = func(string) {}
	}
	s := &Session{done: make(chan struct{})}
	defer func() {
		if err != nil {
			_ = s.shutdown(context.Background())
		}
	}()
	for _, p := range rio.Publish {
		l, err := net.Listen("tcp", p.HostAddr)
		if err != nil {
			return nil, fmt.Errorf("publishing enclave port %d on %s: %w (choose another host port)", p.EnclavePort, p.HostAddr, err)
		}
		s.listeners = append(s.listeners, l)
	}
	for _, p := range rio.PublishUDP {
		pc, err := net.ListenPacket("udp", p.HostAddr)
		if err != nil {
			return nil, fmt.Errorf("publishing enclave UDP port %d on %s: %w (choose another host port)", p.EnclavePort, p.HostAddr, err)
		}
		s.udp = append(s.udp, pc)
	}

	progress(StageBooting)
	enc, err := b.Boot(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("booting enclave: %w", err)
	}
	s.enc = enc
	conn, err := enc.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to enclave init: %w", err)
	}
	cl, err := agent.Connect(ctx, conn)
	if err != nil {
		return nil, s.explain(fmt.Errorf("connecting to enclave init: %w", err))
	}
	s.cl = cl
	if rio.Stats != nil {
		cl.OnStats(rio.Stats)
	}
	if ns, ok := enc.(NSMServer); ok {
		if h := ns.NSMHandler(); h != nil {
			go func() { _ = cl.ServeNSM(h) }()
		}
	}
	progress(StageBooted)
	if rio.Deliver != nil {
		if err := rio.Deliver(ctx, cl); err != nil {
			_ = cl.Bye()
			return nil, s.explain(err)
		}
	}

	if err := s.startNet(ctx, rio, progress); err != nil {
		return nil, s.explain(err)
	}
	st, err := cl.OpenStdio()
	if err != nil {
		return nil, s.explain(err)
	}
	s.copyOut(st.Stdout, rio.Stdout)
	s.copyOut(st.Stderr, rio.Stderr)
	if rio.Stdin == nil {
		st.Stdin.Close()
	} else {
		go func() {
			_, _ = io.CopyBuffer(st.Stdin, rio.Stdin, make([]byte, agent.CopyBufferSize))
			st.Stdin.Close()
		}()
	}
	if err := cl.Start(); err != nil {
		return nil, s.explain(fmt.Errorf("starting the app: %w", err))
	}
	m, err := s.recv(ctx)
	if err != nil {
		return nil, s.explain(fmt.Errorf("starting the app: %w", err))
	}
	switch m.Type {
	case agent.MsgStarted:
	case agent.MsgError:
		_ = cl.Bye()
		return nil, &agent.InitError{Stage: m.Stage, Msg: m.Error}
	case agent.MsgExit:
		// Started is always sent first; an exit here is a protocol error.
		return nil, fmt.Errorf("enclave init reported an exit before the app started")
	default:
		return nil, fmt.Errorf("unexpected %q message from enclave init", m.Type)
	}
	if s.net == nil {
		for i, l := range s.listeners {
			go func() { _ = cl.ServeForward(l, rio.Publish[i].EnclavePort) }()
		}
	}
	if s.net != nil {
		for i, l := range s.listeners {
			s.net.Publish(l, rio.Publish[i].EnclavePort)
		}
		for i, pc := range s.udp {
			s.net.PublishUDP(pc, rio.PublishUDP[i].EnclavePort)
		}
	}
	progress(StageStarted)
	if rio.Ready != nil {
		rio.Ready()
	}
	go s.watch()
	return s, nil
}

// StageNoNetwork is passed to RunIO.Progress when the enclave's network
// could not come up and the run goes on without it.
const StageNoNetwork = "enclave network unavailable"

// startNet brings up the enclave's network before the app starts, so the
// app can use it from its first instruction.
func (s *Session) startNet(ctx context.Context, rio RunIO, progress func(string)) error {
	var cfg podnet.HostConfig
	if rio.Net != nil {
		cfg = *rio.Net
	}
	h, err := podnet.NewHost(cfg)
	if err != nil {
		return fmt.Errorf("enclave network: %w", err)
	}
	if err := h.Attach(ctx, s.cl); err != nil {
		h.Close()
		switch {
		case errors.Is(err, podnet.ErrUnsupported):
			// An older init: its published TCP ports still work over
			// forward streams, which it serves.
			progress(StageNoNetwork + ": " + err.Error() + "; published TCP ports are forwarded to its loopback")
			return nil
		case rio.Net == nil && len(rio.Publish) == 0 && len(rio.PublishUDP) == 0:
			progress(StageNoNetwork + ": " + err.Error())
			return nil
		}
		return fmt.Errorf("enclave network: %w", err)
	}
	s.net = h
	return nil
}

// Network is the host side of the enclave's network (nil when it did not
// come up).
func (s *Session) Network() *podnet.Host { return s.net }

// recv reads one control message, giving up when ctx ends or the enclave stops.
func (s *Session) recv(ctx context.Context) (agent.Message, error) {
	type res struct {
		m   agent.Message
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, err := s.cl.Recv()
		ch <- res{m, err}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-ctx.Done():
		s.cl.Close()
		return agent.Message{}, ctx.Err()
	}
}

// explain adds that the enclave stopped, when it did, to a channel error.
func (s *Session) explain(err error) error {
	if s.enc == nil {
		return err
	}
	select {
	case <-s.enc.Done():
		return fmt.Errorf("the enclave stopped before its app ran (boot with debug mode to see its console): %w", err)
	case <-time.After(100 * time.Millisecond):
		return err
	}
}

func (s *Session) copyOut(r io.ReadCloser, w io.Writer) {
	if w == nil {
		w = io.Discard
	}
	s.ioWG.Add(1)
	go func() {
		defer s.ioWG.Done()
		// Keep reading after w fails (a closed pipe): an app blocked on a
		// full stream would never exit.
		_, _ = io.CopyBuffer(&draining{w: w}, r, make([]byte, agent.CopyBufferSize))
		r.Close()
	}()
}

// draining writes to w until a write fails, then discards.
type draining struct {
	w      io.Writer
	failed bool
}

func (d *draining) Write(p []byte) (int, error) {
	if !d.failed {
		if _, err := d.w.Write(p); err != nil {
			d.failed = true
		}
	}
	return len(p), nil
}

// watch waits for the app's exit or the enclave's end.
func (s *Session) watch() {
	defer close(s.done)
	type res struct {
		m   agent.Message
		err error
	}
	msgs := make(chan res, 1)
	go func() {
		for {
			m, err := s.cl.Recv()
			if err != nil || m.Type == agent.MsgExit || m.Type == agent.MsgError {
				msgs <- res{m, err}
				return
			}
		}
	}()
	var r res
	select {
	case r = <-msgs:
	case <-s.enc.Done():
		// The channel may still hold the exit status.
		select {
		case r = <-msgs:
		case <-time.After(time.Second):
			r.err = errors.New("enclave stopped")
		}
	}
	switch {
	case r.err != nil:
		s.status, s.err = terminated, fmt.Errorf("the enclave stopped before its app exited: %w", r.err)
		if s.killed.Load() {
			s.err = nil
		}
	case r.m.Type == agent.MsgExit:
		s.status = ExitStatus{Code: r.m.Code, Signal: syscall.Signal(r.m.Signal), OOMKilled: r.m.OOMKilled}
		// Init closed stdout and stderr before sending exit: drain them.
		drained := make(chan struct{})
		go func() { s.ioWG.Wait(); close(drained) }()
		select {
		case <-drained:
		case <-time.After(30 * time.Second):
		}
		_ = s.cl.Bye()
		select {
		case <-s.enc.Done(): // init powers off after bye
		case <-time.After(5 * time.Second):
		}
	default:
		s.status, s.err = terminated, &agent.InitError{Stage: r.m.Stage, Msg: r.m.Error}
	}
	_ = s.shutdown(context.Background())
}

// shutdown terminates the enclave and releases listeners; idempotent.
func (s *Session) shutdown(ctx context.Context) error {
	s.termOnce.Do(func() {
		for _, l := range s.listeners {
			l.Close()
		}
		for _, pc := range s.udp {
			pc.Close()
		}
		if s.cl != nil {
			s.cl.Close()
		}
		if s.net != nil {
			s.net.Close()
		}
		if s.enc != nil {
			s.termErr = s.enc.Terminate(ctx)
		}
	})
	return s.termErr
}

// Enclave is the enclave the app runs in.
func (s *Session) Enclave() Enclave { return s.enc }

// Published returns the host addresses of the published ports, in the
// order of RunIO.Publish (useful with port 0).
func (s *Session) Published() []net.Addr {
	var a []net.Addr
	for _, l := range s.listeners {
		a = append(a, l.Addr())
	}
	return a
}

// Signal delivers sig to the app.
func (s *Session) Signal(sig syscall.Signal) error {
	select {
	case <-s.done:
		return errors.New("the app has already exited")
	default:
	}
	if err := s.cl.Signal(int(sig)); err != nil {
		return fmt.Errorf("sending %v to the app: %w", sig, err)
	}
	return nil
}

// Terminate stops the enclave at once; Wait then reports exit code 137.
func (s *Session) Terminate(ctx context.Context) error {
	s.killed.Store(true)
	err := s.shutdown(ctx)
	<-s.done
	return err
}

// Done is closed when the app has exited and the enclave is gone.
func (s *Session) Done() <-chan struct{} { return s.done }

// Wait waits until the app exited and the enclave is gone, and returns the
// app's exit status. The error is set when the enclave stopped without an
// exit status (it crashed, or init failed) unless Terminate was called.
func (s *Session) Wait() (ExitStatus, error) {
	<-s.done
	return s.status, s.err
}

// Run boots req with b, runs its app with rio until it exits, and returns
// its exit status; see RunIO for signals (SIGTERM, SIGINT or SIGKILL during
// the boot abandon it: status 137, no error). When ctx ends the enclave is
// terminated and Run returns ctx's error.
func Run(ctx context.Context, b Backend, req Request, rio RunIO) (ExitStatus, error) {
	// A SIGTERM, SIGINT or SIGKILL while the enclave boots abandons the
	// boot; other signals wait until the app runs.
	startCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	booting := make(chan struct{})
	var pending []syscall.Signal
	watched := make(chan bool, 1)
	go func() {
		for {
			select {
			case sig := <-rio.Signals:
				ss, ok := sig.(syscall.Signal)
				switch {
				case !ok:
				case ss == syscall.SIGTERM || ss == syscall.SIGINT || ss == syscall.SIGKILL:
					cancel()
					watched <- true
					return
				default:
					pending = append(pending, ss)
				}
			case <-booting:
				watched <- false
				return
			}
		}
	}()
	var stopOnce sync.Once
	aborted := false
	stopWatching := func() bool {
		stopOnce.Do(func() {
			close(booting)
			aborted = <-watched
		})
		return aborted
	}
	startIO := rio
	startIO.Ready = func() {
		// From here on Run's loop below handles the signals.
		if !stopWatching() && rio.Ready != nil {
			rio.Ready()
		}
	}
	s, err := Start(startCtx, b, req, startIO)
	if stopWatching() {
		if err == nil {
			_ = s.Terminate(context.Background())
		}
		return terminated, nil
	}
	if err != nil {
		return ExitStatus{}, err
	}
	for _, sig := range pending {
		_ = s.Signal(sig)
	}
	grace := rio.GracePeriod
	if grace == 0 {
		grace = 10 * time.Second
	}
	var graceC <-chan time.Time
	stopping := false
	for {
		select {
		case <-s.done:
			return s.Wait()
		case <-ctx.Done():
			_ = s.Terminate(context.Background())
			st, _ := s.Wait()
			return st, ctx.Err()
		case <-graceC:
			_ = s.Terminate(context.Background())
			return s.Wait()
		case sig := <-rio.Signals:
			ss, ok := sig.(syscall.Signal)
			if !ok {
				continue
			}
			switch {
			case ss == syscall.SIGKILL, stopping && (ss == syscall.SIGTERM || ss == syscall.SIGINT):
				_ = s.Terminate(context.Background())
				return s.Wait()
			case ss == syscall.SIGTERM || ss == syscall.SIGINT:
				stopping = true
				graceC = time.After(grace)
			}
			_ = s.Signal(ss)
		}
	}
}
