package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Client is the host end of the channel.
type Client struct {
	sess *yamux.Session
	ctrl *yamux.Stream

	wmu sync.Mutex // serialises control writes

	hmu     sync.Mutex // guards onStats
	onStats func(Stats)
}

// Connect starts the host end over conn and exchanges hellos with init. It
// returns when init answered, or with an error when init reported one (for
// example a version mismatch), ctx ended, or the channel broke.
func Connect(ctx context.Context, conn io.ReadWriteCloser) (*Client, error) {
	sess, err := yamux.Client(&coalescer{ReadWriteCloser: conn}, muxConfig())
	if err != nil {
		return nil, fmt.Errorf("starting channel: %w", err)
	}
	c := &Client{sess: sess}
	ok := false
	defer func() {
		if !ok {
			sess.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()

	ctrl, err := c.open(Header{Kind: KindControl})
	if err != nil {
		return nil, c.ctxErr(ctx, fmt.Errorf("opening control stream: %w", err))
	}
	c.ctrl = ctrl
	if err := c.Send(Message{Type: MsgHello, Version: Version, Features: hostFeatures}); err != nil {
		return nil, c.ctxErr(ctx, err)
	}
	m, err := c.Recv()
	if err != nil {
		return nil, c.ctxErr(ctx, fmt.Errorf("waiting for init's hello: %w", err))
	}
	switch m.Type {
	case MsgHello:
		if m.Version != Version {
			return nil, fmt.Errorf("enclave init speaks agent protocol %d, this host %d: rebuild the EIF with this nitropod", m.Version, Version)
		}
	case MsgError:
		return nil, &InitError{Stage: m.Stage, Msg: m.Error}
	default:
		return nil, fmt.Errorf("unexpected %q message from init before hello", m.Type)
	}
	ok = true
	return c, nil
}

func (c *Client) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// InitError is a failure init reported before the app started.
type InitError struct {
	Stage string
	Msg   string
}

func (e *InitError) Error() string {
	return fmt.Sprintf("enclave init failed while %s: %s", e.Stage, e.Msg)
}

func (c *Client) open(h Header) (*yamux.Stream, error) {
	s, err := c.sess.OpenStream()
	if err != nil {
		return nil, err
	}
	if err := WriteFrame(s, h); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Send writes one control message.
func (c *Client) Send(m Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return WriteFrame(c.ctrl, m)
}

// Recv reads the next control message from init, answering on the way the
// clock requests and stats reports the Client serves itself (clock.go).
// Only one goroutine may call it.
func (c *Client) Recv() (Message, error) {
	for {
		var m Message
		if err := ReadFrame(c.ctrl, &m); err != nil {
			return m, err
		}
		served, err := c.handle(m)
		if err != nil {
			return Message{}, fmt.Errorf("answering init's %s message: %w", m.Type, err)
		}
		if !served {
			return m, nil
		}
	}
}

// Stdio are the host ends of the app's standard streams.
type Stdio struct {
	// Stdin is written by the host; Close sends EOF to the app.
	Stdin io.WriteCloser
	// Stdout and Stderr are read by the host until EOF.
	Stdout, Stderr io.ReadCloser
}

// OpenStdio opens the three standard streams; call it once, before Start.
func (c *Client) OpenStdio() (Stdio, error) {
	var st Stdio
	var ss []*yamux.Stream
	for _, k := range []string{KindStdin, KindStdout, KindStderr} {
		s, err := c.open(Header{Kind: k})
		if err != nil {
			for _, s := range ss {
				s.Close()
			}
			return Stdio{}, fmt.Errorf("opening %s stream: %w", k, err)
		}
		ss = append(ss, s)
	}
	st.Stdin, st.Stdout, st.Stderr = ss[0], ss[1], ss[2]
	return st, nil
}

// Start asks init to run the app; init answers with started, exit or error.
func (c *Client) Start() error { return c.Send(Message{Type: MsgStart}) }

// Signal delivers sig (a Linux signal number) to the app.
func (c *Client) Signal(sig int) error { return c.Send(Message{Type: MsgSignal, Signal: sig}) }

// Bye tells init that everything has been received and it may power off.
func (c *Client) Bye() error { return c.Send(Message{Type: MsgBye}) }

// Forward opens a stream to TCP port inside the enclave.
func (c *Client) Forward(port uint16) (net.Conn, error) {
	s, err := c.open(Header{Kind: KindForward, Port: port})
	if err != nil {
		return nil, fmt.Errorf("opening forward stream to enclave port %d: %w", port, err)
	}
	return s, nil
}

// OpenStream opens a stream of another kind (served by a handler in
// GuestConfig.Streams).
func (c *Client) OpenStream(kind string) (net.Conn, error) {
	s, err := c.open(Header{Kind: kind})
	if err != nil {
		return nil, fmt.Errorf("opening %s stream: %w", kind, err)
	}
	return s, nil
}

// ServeForward accepts connections on l until it is closed and forwards
// each to port inside the enclave. It returns nil when l or the channel is
// closed.
func (c *Client) ServeForward(l net.Listener, port uint16) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accepting on %s: %w", l.Addr(), err)
		}
		s, err := c.Forward(port)
		if err != nil {
			conn.Close()
			if c.sess.IsClosed() {
				return nil
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			Splice(conn, s)
		}()
	}
}

// Close closes the channel and every stream.
func (c *Client) Close() error { return c.sess.Close() }

// Done is closed when the channel is closed.
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

type closeWriter interface{ CloseWrite() error }

// Splice copies a↔b until both directions ended, passing half-closes on
// (EOF from one side closes the other's write side), then closes both.
func Splice(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src net.Conn) {
		defer wg.Done()
		_, err := io.CopyBuffer(dst, src, make([]byte, CopyBufferSize))
		if err != nil {
			// A broken direction ends the whole connection.
			a.Close()
			b.Close()
			return
		}
		if cw, ok := dst.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else if _, ok := dst.(*yamux.Stream); ok {
			dst.Close() // yamux Close is a half-close (FIN)
		}
	}
	go half(a, b)
	go half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}
