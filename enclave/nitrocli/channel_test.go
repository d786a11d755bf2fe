package nitrocli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/agent"
)

// fakeVsockHost stands in for the parent instance's AF_VSOCK, which needs
// Nitro hardware (and this machine has no vsock loopback): listeners on
// ports, each port bindable once as with VMADDR_CID_ANY, and connections
// whose peer CID the test chooses, as the hypervisor would set it.
type fakeVsockHost struct {
	mu        sync.Mutex
	listeners map[uint32]*fakeVsockListener
	taken     map[uint32]bool // ports bound by someone else
	logs      []string
}

func newFakeVsockHost() *fakeVsockHost {
	return &fakeVsockHost{listeners: map[uint32]*fakeVsockListener{}, taken: map[uint32]bool{}}
}

func (h *fakeVsockHost) config(cfg *Config) {
	cfg.ListenVsock = h.listen
	cfg.Logf = h.logf
}

func (h *fakeVsockHost) listen(port uint32) (net.Listener, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.taken[port] || h.listeners[port] != nil {
		return nil, fmt.Errorf("listen vsock vm(4294967295):%d: bind: %w", port, syscall.EADDRINUSE)
	}
	l := &fakeVsockListener{h: h, port: port, conns: make(chan net.Conn, 16), closed: make(chan struct{})}
	h.listeners[port] = l
	return l, nil
}

func (h *fakeVsockHost) logf(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.logs = append(h.logs, fmt.Sprintf(format, args...))
}

func (h *fakeVsockHost) logged() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.logs...)
}

// connect opens a connection from peer CID fromCID to port; it fails as
// vsock does when nothing listens there.
func (h *fakeVsockHost) connect(fromCID, port uint32) (net.Conn, error) {
	h.mu.Lock()
	l := h.listeners[port]
	h.mu.Unlock()
	if l == nil {
		return nil, syscall.ECONNRESET
	}
	server, client := net.Pipe()
	select {
	case l.conns <- peerConn{Conn: server, peer: &vsock.Addr{ContextID: fromCID, Port: 1024 + fromCID%1000}}:
		return client, nil
	case <-l.closed:
		return nil, syscall.ECONNRESET
	}
}

func (h *fakeVsockHost) bound(port uint32) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listeners[port] != nil
}

type fakeVsockListener struct {
	h      *fakeVsockHost
	port   uint32
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *fakeVsockListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *fakeVsockListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.h.mu.Lock()
		delete(l.h.listeners, l.port)
		l.h.mu.Unlock()
	})
	return nil
}

func (l *fakeVsockListener) Addr() net.Addr { return &vsock.Addr{ContextID: cidAny, Port: l.port} }

type peerConn struct {
	net.Conn
	peer net.Addr
}

func (c peerConn) RemoteAddr() net.Addr { return c.peer }

// cidRunner answers run-enclave with the CID it was given, as nitro-cli does.
type cidRunner struct {
	*fakeNitroCLI
	onRun func(cid uint32)
}

func (r cidRunner) Output(ctx context.Context, args []string) ([]byte, []byte, error) {
	if args[0] == "run-enclave" {
		cid := uint32(0)
		for i, a := range args {
			if a == "--enclave-cid" && i+1 < len(args) {
				_, _ = fmt.Sscan(args[i+1], &cid)
			}
		}
		r.mu.Lock()
		r.calls = append(r.calls, args)
		r.mu.Unlock()
		if r.onRun != nil {
			r.onRun(cid)
		}
		return []byte(fmt.Sprintf(`{"EnclaveName": "x", "EnclaveID": %q, "ProcessID": 1, "EnclaveCID": %d, "NumberOfCPUs": 2, "CPUIDs": [1, 3], "MemoryMiB": 512}`, testID, cid)), nil, nil
	}
	return r.fakeNitroCLI.Output(ctx, args)
}

func channelBackend(t *testing.T, h *fakeVsockHost, onRun func(cid uint32), mod func(*Config)) *Backend {
	fake := &fakeNitroCLI{answers: map[string][]answer{
		"describe-enclaves": {{stdout: testdata(t, "describe-enclaves-running.stdout")}},
		"terminate-enclave": {{stdout: testdata(t, "terminate-enclave.stdout")}},
	}}
	cfg := Config{Runner: cidRunner{fakeNitroCLI: fake, onRun: onRun}, PollInterval: time.Hour, DialTimeout: 5 * time.Second}
	h.config(&cfg)
	if mod != nil {
		mod(&cfg)
	}
	return New(cfg)
}

// TestChannelListensBeforeBoot: the channel port is bound before
// run-enclave runs, on the port derived from the CID the backend chose and
// passed to nitro-cli.
func TestChannelListensBeforeBoot(t *testing.T) {
	h := newFakeVsockHost()
	var boundAtRun bool
	var runCID uint32
	b := channelBackend(t, h, func(cid uint32) {
		runCID = cid
		port, _ := agent.ChannelPort(cid)
		boundAtRun = h.bound(port)
	}, nil)
	e, err := b.Boot(context.Background(), enclave.Request{EIFPath: eifFile(t, 1<<20), CPUs: 2, MemoryMiB: 512})
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	defer func() { _ = e.Terminate(context.Background()) }()
	if runCID < minAutoCID || runCID > maxAutoCID || e.CID() != runCID {
		t.Errorf("run-enclave got CID %d, enclave CID %d; want one CID in [%d, %d]", runCID, e.CID(), minAutoCID, maxAutoCID)
	}
	if !boundAtRun {
		t.Error("the channel port was not bound when run-enclave ran")
	}
}

// TestChannelRefusesImpostors: connections from any CID but the enclave's
// are closed and logged; the enclave's is returned; the port is released.
func TestChannelRefusesImpostors(t *testing.T) {
	h := newFakeVsockHost()
	b := channelBackend(t, h, nil, func(c *Config) { c.NewCID = func() (uint32, error) { return 70000, nil } })
	e, err := b.Boot(context.Background(), enclave.Request{EIFPath: eifFile(t, 1<<20), CPUs: 2, MemoryMiB: 512})
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	defer func() { _ = e.Terminate(context.Background()) }()
	port := uint32(agent.ChannelPortBase + 70000)
	// Another Pod on the host (its peer CID is the host's, 3), the local
	// loopback CID, and another enclave race the real one.
	var impostors []net.Conn
	for _, cid := range []uint32{agent.ParentCID, 1, 70001} {
		c, err := h.connect(cid, port)
		if err != nil {
			t.Fatalf("impostor from CID %d could not connect: %v", cid, err)
		}
		impostors = append(impostors, c)
	}
	real, err := h.connect(70000, port)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.Dial(context.Background())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if peer, _ := peerCID(got.RemoteAddr()); peer != 70000 {
		t.Fatalf("Dial returned the connection from CID %d, want the enclave's 70000", peer)
	}
	go func() { _, _ = real.Write([]byte("init")) }()
	buf := make([]byte, 4)
	if _, err := got.Read(buf); err != nil || string(buf) != "init" {
		t.Errorf("channel read %q, %v", buf, err)
	}
	for i, c := range impostors {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
			t.Errorf("impostor %d: read %v, want its connection closed", i, err)
		}
	}
	logs := h.logged()
	if len(logs) != 3 {
		t.Fatalf("logged %d refusals, want 3: %q", len(logs), logs)
	}
	for i, cid := range []uint32{agent.ParentCID, 1, 70001} {
		if want := fmt.Sprintf("refused a connection from vm(%d)", cid); !strings.Contains(logs[i], want) && !strings.Contains(logs[i], fmt.Sprintf("(%d):", cid)) {
			t.Errorf("log %q does not name the refused peer CID %d", logs[i], cid)
		}
	}
	if h.bound(port) {
		t.Error("the channel port is still bound after the enclave connected")
	}
	if _, err := h.connect(70000, port); err == nil {
		t.Error("a second connection to the channel port succeeded")
	}
}

// TestChannelLostRace: when another process already holds the channel
// port, Boot fails before nitro-cli runs, saying why.
func TestChannelLostRace(t *testing.T) {
	h := newFakeVsockHost()
	h.taken[agent.ChannelPortBase+70000] = true
	ran := false
	b := channelBackend(t, h, func(uint32) { ran = true }, func(c *Config) { c.NewCID = func() (uint32, error) { return 70000, nil } })
	_, err := b.Boot(context.Background(), enclave.Request{EIFPath: eifFile(t, 1<<20), CPUs: 2, MemoryMiB: 512})
	if err == nil {
		t.Fatal("Boot succeeded although another process holds the channel port")
	}
	for _, want := range []string{"vsock port 2147553648", "enclave CID 70000", "address already in use", "refusing to boot"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Boot error %q does not say %q", err, want)
		}
	}
	if ran {
		t.Error("nitro-cli run-enclave ran although the channel port was taken")
	}
}

// TestChannelOnlyImpostors: no connection from the enclave before the
// timeout: Dial fails and says what it refused.
func TestChannelOnlyImpostors(t *testing.T) {
	h := newFakeVsockHost()
	b := channelBackend(t, h, nil, func(c *Config) {
		c.NewCID = func() (uint32, error) { return 70000, nil }
		c.DialTimeout = 300 * time.Millisecond
	})
	e, err := b.Boot(context.Background(), enclave.Request{EIFPath: eifFile(t, 1<<20), CPUs: 2, MemoryMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = e.Terminate(context.Background()) }()
	if _, err := h.connect(agent.ParentCID, agent.ChannelPortBase+70000); err != nil {
		t.Fatal(err)
	}
	_, err = e.Dial(context.Background())
	if err == nil || !strings.Contains(err.Error(), "deadline exceeded") || !strings.Contains(err.Error(), "refused 1 connection(s) from other peers (vm(3)") {
		t.Errorf("Dial error %v", err)
	}
	if _, err := e.Dial(context.Background()); err == nil {
		t.Error("second Dial succeeded")
	}
}

// TestChannelEnclaveStops: Dial gives up as soon as the enclave stops.
func TestChannelEnclaveStops(t *testing.T) {
	h := newFakeVsockHost()
	b := channelBackend(t, h, nil, nil)
	e, err := b.Boot(context.Background(), enclave.Request{EIFPath: eifFile(t, 1<<20), CPUs: 2, MemoryMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = e.Terminate(context.Background())
	}()
	t0 := time.Now()
	_, err = e.Dial(context.Background())
	if err == nil || !strings.Contains(err.Error(), "the enclave stopped") || time.Since(t0) > 3*time.Second {
		t.Errorf("Dial after the enclave stopped: %v after %v", err, time.Since(t0))
	}
}

// TestChannelCIDMismatch: an enclave that nitro-cli started with another
// CID than the one the port was bound for is terminated.
func TestChannelCIDMismatch(t *testing.T) {
	fake := &fakeNitroCLI{answers: map[string][]answer{
		"run-enclave":       {{stdout: testdata(t, "run-enclave.stdout")}}, // CID 16
		"describe-enclaves": {{stdout: testdata(t, "describe-enclaves-running.stdout")}},
		"terminate-enclave": {{stdout: testdata(t, "terminate-enclave.stdout")}},
	}}
	h := newFakeVsockHost()
	cfg := Config{Runner: fake, PollInterval: time.Hour}
	h.config(&cfg)
	_, err := New(cfg).Boot(context.Background(), enclave.Request{EIFPath: eifFile(t, 1<<20), CPUs: 2, MemoryMiB: 512, CID: 17})
	if err == nil || !strings.Contains(err.Error(), "with CID 16, not the CID 17") {
		t.Errorf("Boot error %v", err)
	}
	if last := fake.callLog()[len(fake.callLog())-1]; last[0] != "terminate-enclave" {
		t.Errorf("last command %v, want terminate-enclave", last)
	}
	if h.bound(agent.ChannelPortBase + 17) {
		t.Error("the channel port is still bound after the boot failed")
	}
}

func TestRandomCID(t *testing.T) {
	seen := map[uint32]bool{}
	for range 100 {
		c, err := randomCID()
		if err != nil || c < minAutoCID || c > maxAutoCID {
			t.Fatalf("randomCID = %d, %v", c, err)
		}
		if _, err := agent.ChannelPort(c); err != nil {
			t.Fatal(err)
		}
		seen[c] = true
	}
	if len(seen) < 95 {
		t.Errorf("%d distinct CIDs in 100 draws", len(seen))
	}
}

func TestPeerCID(t *testing.T) {
	if c, ok := peerCID(&vsock.Addr{ContextID: 9}); !ok || c != 9 {
		t.Errorf("peerCID(vsock 9) = %d, %v", c, ok)
	}
	if _, ok := peerCID(&net.TCPAddr{}); ok {
		t.Error("a TCP peer counted as a vsock CID")
	}
	if _, ok := peerCID((*vsock.Addr)(nil)); ok {
		t.Error("a nil address counted as a vsock CID")
	}
}
