package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/yamux"
)

// pair connects a Client and a Guest over net.Pipe.
func pair(t *testing.T) (*Client, *Guest) {
	t.Helper()
	h, e := net.Pipe()
	g, err := NewGuest(e, GuestConfig{AllowForward: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, g
}

func TestFrameRoundTrip(t *testing.T) {
	msgs := []Message{
		{Type: MsgHello, Version: Version},
		{Type: MsgSignal, Signal: 15},
		{Type: MsgExit, Code: 7},
		{Type: MsgError, Stage: "switching root", Error: "no such file"},
	}
	var buf bytes.Buffer
	for _, m := range msgs {
		if err := WriteFrame(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	var got []Message
	for {
		var m Message
		err := ReadFrame(&buf, &m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if d := cmp.Diff(msgs, got); d != "" {
		t.Errorf("frames (-want +got):\n%s", d)
	}
}

func TestReadFrameRejects(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"too large", "\xff\xff\xff\xff", "exceeds"},
		{"truncated", "\x00\x00\x00\x05{}", "reading frame"},
		{"bad json", "\x00\x00\x00\x01x", "decoding frame"},
		{"short length", "\x00\x00", "reading frame length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m Message
			err := ReadFrame(strings.NewReader(tc.in), &m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ReadFrame(%q) = %v, want an error containing %q", tc.in, err, tc.want)
			}
		})
	}
}

func FuzzReadFrame(f *testing.F) {
	var b bytes.Buffer
	_ = WriteFrame(&b, Message{Type: MsgExit, Code: 3, Signal: 9})
	f.Add(b.Bytes())
	f.Add([]byte("\x00\x00\x00\x02{}"))
	f.Add([]byte("\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var m Message
		if err := ReadFrame(bytes.NewReader(in), &m); err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteFrame(&out, m); err != nil {
			t.Fatalf("re-encoding a decoded message: %v", err)
		}
	})
}

func TestRunLifecycle(t *testing.T) {
	c, g := pair(t)

	// The guest plays init: echo stdin to stdout upper-cased, write stderr,
	// wait for a signal, exit with 128+signal.
	guestErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := g.WaitStart(ctx)
		if err != nil {
			guestErr <- err
			return
		}
		if err := g.Started(42); err != nil {
			guestErr <- err
			return
		}
		in, _ := io.ReadAll(st.Stdin)
		_, _ = st.Stdout.Write(bytes.ToUpper(in))
		_, _ = st.Stderr.Write([]byte("err\n"))
		sig := <-g.Signals()
		st.Stdout.Close()
		st.Stderr.Close()
		guestErr <- g.Exit(ctx, 128+sig, sig)
	}()

	st, err := c.OpenStdio()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	m, err := c.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(Message{Type: MsgStarted, PID: 42}, m); d != "" {
		t.Fatalf("started (-want +got):\n%s", d)
	}
	_, _ = st.Stdin.Write([]byte("hello\n"))
	st.Stdin.Close()
	var out, errb []byte
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); out, _ = io.ReadAll(st.Stdout) }()
	go func() { defer wg.Done(); errb, _ = io.ReadAll(st.Stderr) }()
	if err := c.Signal(15); err != nil {
		t.Fatal(err)
	}
	m, err = c.Recv()
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if d := cmp.Diff(Message{Type: MsgExit, Code: 143, Signal: 15}, m); d != "" {
		t.Errorf("exit (-want +got):\n%s", d)
	}
	if string(out) != "HELLO\n" || string(errb) != "err\n" {
		t.Errorf("stdout %q stderr %q, want %q and %q", out, errb, "HELLO\n", "err\n")
	}
	if err := c.Bye(); err != nil {
		t.Fatal(err)
	}
	if err := <-guestErr; err != nil {
		t.Errorf("guest: %v", err)
	}
}

func TestFailBeforeStart(t *testing.T) {
	c, g := pair(t)
	go func() {
		_ = g.Fail(context.Background(), "switching root", errors.New("/rootfs: no such file or directory"))
	}()
	m, err := c.Recv()
	if err != nil {
		t.Fatal(err)
	}
	want := Message{Type: MsgError, Stage: "switching root", Error: "/rootfs: no such file or directory"}
	if d := cmp.Diff(want, m); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestVersionMismatch(t *testing.T) {
	h, e := net.Pipe()
	g, err := NewGuest(e, GuestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	c := &Client{}
	// Speak as a host of a future version.
	sess, err := yamux.Client(h, muxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	c.sess = sess
	c.ctrl, err = c.open(Header{Kind: KindControl})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Send(Message{Type: MsgHello, Version: Version + 1})
	m, err := c.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != MsgError || !strings.Contains(m.Error, "rebuild the EIF") {
		t.Errorf("reply to a newer host: %+v, want an error asking to rebuild the EIF", m)
	}
}

func TestForward(t *testing.T) {
	c, _ := pair(t)
	// A real TCP server on loopback plays the app.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				b, _ := io.ReadAll(conn) // until the client's half-close
				sum := sha256.Sum256(b)
				_, _ = conn.Write(sum[:])
			}()
		}
	}()
	port := uint16(l.Addr().(*net.TCPAddr).Port)

	// And a host listener forwarding to it.
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- c.ServeForward(hl, port) }()

	const n = 20
	payload := bytes.Repeat([]byte("nitropod"), 64<<10)
	want := sha256.Sum256(payload)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", hl.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			_, _ = conn.Write(payload)
			_ = conn.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(conn)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, want[:]) {
				errs <- errors.New("forwarded connection returned a wrong digest")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	hl.Close()
	if err := <-served; err != nil {
		t.Errorf("ServeForward: %v", err)
	}
}

func TestForwardRefused(t *testing.T) {
	c, _ := pair(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close() // nothing listens there now
	s, err := c.Forward(port)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(s); err != nil || len(b) != 0 {
		t.Errorf("stream to a closed port: %q, %v; want EOF", b, err)
	}
}

// TestForwardOffByDefault: a guest that was not told to serve forward
// streams (init never is) closes them without dialing, so the host cannot
// reach a port on the enclave's loopback.
func TestForwardOffByDefault(t *testing.T) {
	h, e := net.Pipe()
	dialed := make(chan string, 1)
	g, err := NewGuest(e, GuestConfig{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed <- addr
		return nil, errors.New("no")
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.Forward(9910)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(s); err != nil || len(b) != 0 {
		t.Errorf("forward stream: %q, %v; want EOF", b, err)
	}
	select {
	case a := <-dialed:
		t.Errorf("the guest dialed %s for a forward stream", a)
	default:
	}
}

// writes records each Write call.
type writes struct {
	io.Reader
	calls [][]byte
}

func (w *writes) Write(p []byte) (int, error) {
	w.calls = append(w.calls, append([]byte(nil), p...))
	return len(p), nil
}
func (w *writes) Close() error { return nil }

func TestCoalescer(t *testing.T) {
	rec := &writes{}
	c := &coalescer{ReadWriteCloser: rec}
	data := []byte{0, yamuxTypeData, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3}
	window := []byte{0, 1, 0, 0, 0, 0, 0, 1, 0, 4, 0, 0}
	emptyData := []byte{0, yamuxTypeData, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0}
	write := func(p []byte) {
		t.Helper()
		if n, err := c.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write(%x) = %d, %v", p, n, err)
		}
	}
	write(data)
	if len(rec.calls) != 0 {
		t.Fatalf("a data frame header was written before its body: %x", rec.calls)
	}
	write([]byte("abc"))
	write(window)
	write(emptyData)
	// A plain writer gets the header and body back to back (a socket gets
	// them in one writev); frames without a body pass at once.
	want := [][]byte{data, []byte("abc"), window, emptyData}
	if d := cmp.Diff(want, rec.calls); d != "" {
		t.Errorf("writes (-want +got):\n%s", d)
	}
}

// Over a real socketpair the header and body arrive together and intact.
func TestCoalescerSocket(t *testing.T) {
	h, e := unixPair(t)
	c := &coalescer{ReadWriteCloser: h}
	data := []byte{0, yamuxTypeData, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3}
	go func() {
		_, _ = c.Write(data)
		_, _ = c.Write([]byte("abc"))
		h.Close()
	}()
	got, err := io.ReadAll(e)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(append([]byte(nil), data...), "abc"...); !bytes.Equal(got, want) {
		t.Errorf("read %x, want %x", got, want)
	}
}

func unixPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	d, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	t.Cleanup(func() { a.Close(); d.Close() })
	return d, a
}
