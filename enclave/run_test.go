package enclave_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/agent"
)

// fakeBackend is a fake enclave backend (no real peer exists without a VM):
// its enclave's channel is a net.Pipe whose far end runs agent.Guest driven
// by script, standing in for nitropod-init.
type fakeBackend struct {
	script func(g *agent.Guest)
	booted chan *fakeEnclave
}

func newFake(script func(g *agent.Guest)) *fakeBackend {
	return &fakeBackend{script: script, booted: make(chan *fakeEnclave, 1)}
}

func (b *fakeBackend) Boot(ctx context.Context, req enclave.Request) (enclave.Enclave, error) {
	h, e := net.Pipe()
	// An init without the enclave network, which serves forward streams
	// (as inits before it did).
	g, err := agent.NewGuest(e, agent.GuestConfig{AllowForward: true})
	if err != nil {
		return nil, err
	}
	fe := &fakeEnclave{conn: h, guest: g, done: make(chan struct{})}
	go func() {
		b.script(g)
		fe.stop() // init powers off when its script ends
	}()
	b.booted <- fe
	return fe, nil
}

type fakeEnclave struct {
	conn       net.Conn
	guest      *agent.Guest
	done       chan struct{}
	once       sync.Once
	terminated bool // Terminate stopped a running enclave
}

func (e *fakeEnclave) stop() {
	e.once.Do(func() {
		e.guest.Close()
		close(e.done)
	})
}
func (e *fakeEnclave) ID() string                                 { return "fake" }
func (e *fakeEnclave) CID() uint32                                { return 16 }
func (e *fakeEnclave) Dial(ctx context.Context) (net.Conn, error) { return e.conn, nil }
func (e *fakeEnclave) Done() <-chan struct{}                      { return e.done }
func (e *fakeEnclave) Terminate(ctx context.Context) error {
	select {
	case <-e.done: // init had powered off: Terminate only cleans up
	default:
		e.terminated = true
	}
	e.stop()
	return nil
}

var req = enclave.Request{Name: "t", EIFPath: "fake.eif", CPUs: 2, MemoryMiB: 256}

// app plays a started app: it waits for start, runs body with the stdio
// streams and reports the exit status body returns.
func app(body func(g *agent.Guest, st agent.GuestStdio) (code, sig int)) func(g *agent.Guest) {
	return func(g *agent.Guest) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := g.WaitStart(ctx)
		if err != nil {
			return
		}
		_ = g.Started(1)
		code, sig := body(g, st)
		st.Stdout.Close()
		st.Stderr.Close()
		_ = g.Exit(ctx, code, sig)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestRunStatusAndStdio(t *testing.T) {
	b := newFake(app(func(g *agent.Guest, st agent.GuestStdio) (int, int) {
		in, _ := io.ReadAll(st.Stdin)
		_, _ = st.Stdout.Write([]byte("out:" + string(in)))
		_, _ = st.Stderr.Write([]byte("err"))
		return 7, 0
	}))
	var out, errb bytes.Buffer
	ready := false
	st, err := enclave.Run(ctx(t), b, req, enclave.RunIO{
		Stdin: strings.NewReader("in"), Stdout: &out, Stderr: &errb, Ready: func() { ready = true },
	})
	if err != nil {
		t.Fatal(err)
	}
	if st != (enclave.ExitStatus{Code: 7}) || out.String() != "out:in" || errb.String() != "err" || !ready {
		t.Errorf("got %+v stdout %q stderr %q ready %v", st, out.String(), errb.String(), ready)
	}
}

func TestRunSignals(t *testing.T) {
	// The app ends on the first signal it gets, like a shell without traps.
	onSignal := app(func(g *agent.Guest, st agent.GuestStdio) (int, int) {
		s := <-g.Signals()
		return 128 + s, s
	})
	// This app ignores every signal.
	stubborn := app(func(g *agent.Guest, st agent.GuestStdio) (int, int) {
		for range g.Signals() {
		}
		return 0, 0
	})
	for _, tc := range []struct {
		name   string
		script func(*agent.Guest)
		sigs   []os.Signal
		grace  time.Duration
		want   enclave.ExitStatus
		term   bool
	}{
		{"forwarded", onSignal, []os.Signal{syscall.SIGUSR1}, time.Minute, enclave.ExitStatus{Code: 138, Signal: syscall.SIGUSR1}, false},
		{"sigterm", onSignal, []os.Signal{syscall.SIGTERM}, time.Minute, enclave.ExitStatus{Code: 143, Signal: syscall.SIGTERM}, false},
		{"grace period", stubborn, []os.Signal{syscall.SIGTERM}, 200 * time.Millisecond, enclave.ExitStatus{Code: 137, Signal: syscall.SIGKILL}, true},
		{"second sigterm", stubborn, []os.Signal{syscall.SIGTERM, syscall.SIGINT}, time.Minute, enclave.ExitStatus{Code: 137, Signal: syscall.SIGKILL}, true},
		{"sigkill", stubborn, []os.Signal{syscall.SIGKILL}, time.Minute, enclave.ExitStatus{Code: 137, Signal: syscall.SIGKILL}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newFake(tc.script)
			sigs := make(chan os.Signal, len(tc.sigs))
			st, err := enclave.Run(ctx(t), b, req, enclave.RunIO{
				Signals: sigs, GracePeriod: tc.grace,
				Ready: func() {
					for _, s := range tc.sigs {
						sigs <- s
					}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			if st != tc.want {
				t.Errorf("status %+v, want %+v", st, tc.want)
			}
			fe := <-b.booted
			if fe.terminated != tc.term {
				t.Errorf("terminated = %v, want %v", fe.terminated, tc.term)
			}
		})
	}
}

func TestRunContextEnds(t *testing.T) {
	b := newFake(app(func(g *agent.Guest, st agent.GuestStdio) (int, int) {
		for range g.Signals() {
		}
		return 0, 0
	}))
	c, cancel := context.WithCancel(context.Background())
	st, err := enclave.Run(c, b, req, enclave.RunIO{Ready: cancel})
	if !errors.Is(err, context.Canceled) || st.Code != 137 {
		t.Errorf("got %+v, %v; want 137 and context.Canceled", st, err)
	}
	if fe := <-b.booted; !fe.terminated {
		t.Error("enclave not terminated")
	}
}

func TestRunEnclaveDies(t *testing.T) {
	b := newFake(func(g *agent.Guest) {
		st, err := g.WaitStart(context.Background())
		if err != nil {
			return
		}
		_ = g.Started(1)
		_, _ = st.Stdout.Write([]byte("partial"))
		// and the enclave stops without an exit status
	})
	var out bytes.Buffer
	_, err := enclave.Run(ctx(t), b, req, enclave.RunIO{Stdout: &out})
	// The guest dies right after reporting the start: depending on when the
	// host notices, that is before its app ran (the start frame could not be
	// written) or before it exited. Either way the error must say the
	// enclave stopped.
	if err == nil || !strings.Contains(err.Error(), "enclave stopped before its app") {
		t.Errorf("got %v, want an error saying the enclave stopped", err)
	}
}

func TestRunInitFails(t *testing.T) {
	b := newFake(func(g *agent.Guest) {
		_ = g.Fail(context.Background(), "switching root", errors.New("no /rootfs"))
	})
	_, err := enclave.Run(ctx(t), b, req, enclave.RunIO{})
	var ie *agent.InitError
	if !errors.As(err, &ie) || ie.Stage != "switching root" || ie.Msg != "no /rootfs" {
		t.Errorf("got %v, want the init error", err)
	}
	select {
	case <-(<-b.booted).done:
	default:
		t.Error("enclave still running after a failed start")
	}
}

func TestRunPublishTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b := newFake(func(*agent.Guest) {})
	_, err = enclave.Run(ctx(t), b, req, enclave.RunIO{Publish: []enclave.PortMapping{{HostAddr: l.Addr().String(), EnclavePort: 80}}})
	if err == nil || !strings.Contains(err.Error(), "choose another host port") {
		t.Errorf("got %v, want an error about the taken port", err)
	}
	select {
	case <-b.booted:
		t.Error("booted although the port could not be published")
	default:
	}
}

// Published ports reach the app through the enclave's network
// (enclave/podnet, tested there and with QEMU in enclave/qemu). An init
// that predates the network (the fake here) still gets its published TCP
// ports over forward streams; without published ports the app runs, the
// missing network reported.
func TestPublishWithoutNetwork(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	go func() {
		for {
			c, err := inner.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	port := uint16(inner.Addr().(*net.TCPAddr).Port)
	done := make(chan struct{})
	b := newFake(app(func(g *agent.Guest, st agent.GuestStdio) (int, int) { <-done; return 0, 0 }))
	s, err := enclave.Start(ctx(t), b, req, enclave.RunIO{Publish: []enclave.PortMapping{{HostAddr: "127.0.0.1:0", EnclavePort: port}}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Network() != nil {
		t.Error("a network without an init that serves it")
	}
	c, err := net.Dial("tcp", s.Published()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("ping"))
	_ = c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "ping" {
		t.Errorf("echo through the published port = %q", got)
	}
	close(done)
	if st, err := s.Wait(); err != nil || st.Code != 0 {
		t.Errorf("Wait = %+v, %v", st, err)
	}

	b = newFake(app(func(g *agent.Guest, st agent.GuestStdio) (int, int) { return 0, 0 }))
	var stages []string
	var mu sync.Mutex
	st, err := enclave.Run(ctx(t), b, req, enclave.RunIO{Progress: func(s string) {
		mu.Lock()
		stages = append(stages, s)
		mu.Unlock()
	}})
	if err != nil || st.Code != 0 {
		t.Fatalf("Run without network: %+v, %v", st, err)
	}
	mu.Lock()
	defer mu.Unlock()
	found := false
	for _, s := range stages {
		found = found || strings.HasPrefix(s, enclave.StageNoNetwork)
	}
	if !found {
		t.Errorf("stages %q: the missing network is not reported", stages)
	}
}

type failingWriter struct{}

func (failingWriter) Write(p []byte) (int, error) { return 0, errors.New("broken pipe") }

// An app keeps running to its end when the host's stdout breaks.
func TestRunStdoutBroken(t *testing.T) {
	b := newFake(app(func(g *agent.Guest, st agent.GuestStdio) (int, int) {
		chunk := make([]byte, 1<<20)
		for range 32 { // far more than the stream window
			if _, err := st.Stdout.Write(chunk); err != nil {
				return 1, 0
			}
		}
		return 0, 0
	}))
	st, err := enclave.Run(ctx(t), b, req, enclave.RunIO{Stdout: failingWriter{}})
	if err != nil || st.Code != 0 {
		t.Errorf("got %+v, %v; want the app to finish with 0", st, err)
	}
}

// slowBackend is a fake backend whose boot never finishes until ctx ends.
type slowBackend struct{ sawCancel chan struct{} }

func (b *slowBackend) Boot(ctx context.Context, req enclave.Request) (enclave.Enclave, error) {
	<-ctx.Done()
	close(b.sawCancel)
	return nil, ctx.Err()
}

func TestRunSignalDuringBoot(t *testing.T) {
	b := &slowBackend{sawCancel: make(chan struct{})}
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGINT
	st, err := enclave.Run(ctx(t), b, req, enclave.RunIO{Signals: sigs})
	if err != nil || st.Code != 137 {
		t.Errorf("got %+v, %v; want 137 and no error", st, err)
	}
	select {
	case <-b.sawCancel:
	default:
		t.Error("the boot was not abandoned")
	}
}
