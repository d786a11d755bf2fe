package podnet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitropod/nitropod/contract"
)

// echo serves TCP on l: it sends back what it reads, then the client's
// address, and closes after the client's half-close.
func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
			_, _ = io.WriteString(c, "\nfrom "+c.RemoteAddr().String())
		}()
	}
}

func TestEgressTCP(t *testing.T) {
	f := newFixture(t, Limits{})
	l, err := f.pod.Listen("tcp", podIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	c, err := f.enc.DialContext(context.Background(), "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("app connecting to %s: %v", l.Addr(), err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "hello")
	_ = c.(*net.TCPConn).CloseWrite() // half-close: the reply still arrives
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	// The server sees the connection leave from the Pod's namespace.
	if want := "hello\nfrom " + podIP + ":"; !bytes.HasPrefix(b, []byte(want)) {
		t.Errorf("reply %q, want prefix %q", b, want)
	}
}

func TestEgressRefusedAtOnce(t *testing.T) {
	f := newFixture(t, Limits{})
	l, _ := f.pod.Listen("tcp", podIP+":0")
	addr := l.Addr().String()
	l.Close()
	t0 := time.Now()
	_, err := f.enc.DialContext(context.Background(), "tcp", addr)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("connect to a closed port: %v, want ECONNREFUSED", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("refusal took %v", d)
	}
}

func TestEgressUDP(t *testing.T) {
	f := newFixture(t, Limits{})
	pc, err := f.pod.ListenPacket("udp", podIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("re:"+from.String()+":"), buf[:n]...), from)
		}
	}()
	c, err := f.enc.DialContext(context.Background(), "udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for i := range 3 { // a flow carries several datagrams both ways
		msg := fmt.Sprintf("q%d", i)
		_, _ = c.Write([]byte(msg))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if got := string(buf[:n]); !bytes.HasPrefix(buf[:n], []byte("re:"+podIP+":")) || !bytes.HasSuffix(buf[:n], []byte(msg)) {
			t.Errorf("reply %q", got)
		}
	}
}

// TestIngressEveryPort: the app listens on a port nobody declared; the
// host publishes it in the Pod namespace, and the app sees the client's
// real address. A loopback client (a sidecar) shows as LoopbackPeer.
func TestIngressEveryPort(t *testing.T) {
	f := newFixture(t, Limits{})
	l, err := f.enc.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	f.waitListening(t, port, true)

	for _, tc := range []struct{ from, to, seen string }{
		{clientIP, podIP, clientIP},
		{"127.0.0.1", "127.0.0.1", LoopbackPeer.String()},
	} {
		var c net.Conn
		err := f.pod.do(context.Background(), func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.from)}, Timeout: 10 * time.Second}
			c, err = d.Dial("tcp", net.JoinHostPort(tc.to, fmt.Sprint(port)))
		})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, "x")
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatalf("client %s: %v", tc.from, err)
		}
		local := c.LocalAddr().(*net.TCPAddr)
		if want := fmt.Sprintf("x\nfrom %s:%d", tc.seen, local.Port); string(b) != want {
			t.Errorf("client %s: the app saw %q, want %q", tc.from, b, want)
		}
	}
	l.Close()
	f.waitListening(t, port, false)
}

// TestLoopbackOnlyUnreachable: a socket bound to the enclave's 127.0.0.1
// is neither published nor reachable through the stack.
func TestLoopbackOnlyUnreachable(t *testing.T) {
	f := newFixture(t, Limits{})
	l, err := f.enc.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	time.Sleep(300 * time.Millisecond) // several port polls
	f.waitListening(t, port, false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := f.host.DialEnclave(ctx, netip.AddrPortFrom(netipMust(clientIP), 40000), port)
	if err == nil {
		c.Close()
		t.Fatal("the host reached a loopback-only socket of the app")
	}
}

// TestSidecarFromEnclave: the app reaches a server on the Pod's loopback
// through LoopbackPeer.
func TestSidecarFromEnclave(t *testing.T) {
	f := newFixture(t, Limits{})
	l, err := f.pod.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	port := l.Addr().(*net.TCPAddr).Port
	c, err := f.enc.DialContext(context.Background(), "tcp", fmt.Sprintf("%s:%d", LoopbackPeer, port))
	if err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	c.Close()
	if !bytes.HasPrefix(b, []byte("\nfrom 127.0.0.1:")) {
		t.Errorf("sidecar saw %q", b)
	}
}

// TestThousandConnections: 1,000 concurrent egress connections, each
// half-closed after its request, each answer checked; then one large
// transfer each way, sha256-checked.
func TestThousandConnections(t *testing.T) {
	f := newFixture(t, Limits{})
	l, err := f.pod.Listen("tcp", podIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	const n = 1000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	conns := make(chan net.Conn, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := f.enc.DialContext(context.Background(), "tcp", l.Addr().String())
			if err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
				return
			}
			conns <- c
		}()
	}
	wg.Wait()
	close(conns)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// All 1,000 are open at once; now each talks.
	var all []net.Conn
	for c := range conns {
		all = append(all, c)
	}
	if len(all) != n {
		t.Fatalf("%d connections open, want %d", len(all), n)
	}
	errs = make(chan error, n)
	for i, c := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			msg := bytes.Repeat([]byte{byte(i)}, 4096)
			if _, err := c.Write(msg); err != nil {
				errs <- err
				return
			}
			_ = c.(*net.TCPConn).CloseWrite()
			_ = c.SetDeadline(time.Now().Add(60 * time.Second))
			b, err := io.ReadAll(c)
			if err != nil || !bytes.HasPrefix(b, msg) {
				errs <- fmt.Errorf("conn %d: %d bytes back: %w", i, len(b), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Large transfer, sha256 both ways: egress through the echo server.
	c, err := f.enc.DialContext(context.Background(), "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 64 << 20
	sent := sha256.New()
	go func() {
		src := io.TeeReader(io.LimitReader(prng{}, size), sent)
		_, _ = io.Copy(c, src)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got := sha256.New()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	if n, err := io.Copy(got, io.LimitReader(c, size)); err != nil || n != size {
		t.Fatalf("echoed %d of %d bytes: %v", n, size, err)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Error("64 MiB echoed through the stack: sha256 differs")
	}
}

// prng is a cheap deterministic byte source.
type prng struct{}

var prngState uint64 = 88172645463325252

func (prng) Read(p []byte) (int, error) {
	for i := range p {
		prngState ^= prngState << 13
		prngState ^= prngState >> 7
		prngState ^= prngState << 17
		p[i] = byte(prngState)
	}
	return len(p), nil
}

// TestFloodBounded: over the limits, new egress connections are refused
// and datagrams of new flows dropped; nothing grows.
func TestFloodBounded(t *testing.T) {
	f := newFixture(t, Limits{MaxTCP: 20, MaxUDP: 10})
	l, err := f.pod.Listen("tcp", podIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range 20 {
		c, err := f.enc.DialContext(context.Background(), "tcp", l.Addr().String())
		if err != nil {
			t.Fatalf("connection %d within the limit: %v", i, err)
		}
		held = append(held, c)
	}
	if _, err := f.enc.DialContext(context.Background(), "tcp", l.Addr().String()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connection over the limit: %v, want ECONNREFUSED", err)
	}
	// A sink that never answers: each flow (a new source port every
	// time) stays open until it is idle.
	sink, err := f.pod.ListenPacket("udp", podIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	for range 100 {
		c, err := f.enc.DialContext(context.Background(), "udp", sink.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte("x"))
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.host.Stats().UDPDropped.Load() < 90 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// The bound itself: no more than 10 flows' datagrams reach the sink.
	received := 0
	buf := make([]byte, 64)
	for {
		_ = sink.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, _, err := sink.ReadFrom(buf); err != nil {
			break
		}
		received++
	}
	if received > 10 {
		t.Errorf("the sink received %d datagrams from new flows over a limit of 10 flows", received)
	}
	// And most of the rest was dropped at the limit. UDP may lose a
	// datagram on the way under load (a full queue), so not exactly 90.
	if d := f.host.Stats().UDPDropped.Load(); d < 80 {
		t.Errorf("%d datagrams of new flows dropped over a limit of 10 flows (sink got %d), want about 90", d, received)
	}
}

// TestEgressAllowlist: with an allowlist (enforced on the enclave's side,
// as init does) a connect elsewhere is refused at once inside the enclave
// and nothing reaches the host; an allowed one works.
func TestEgressAllowlist(t *testing.T) {
	f := newNamespaces(t)
	allowed, err := f.pod.Listen("tcp", podIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer allowed.Close()
	go echo(allowed)
	other, err := f.pod.Listen("tcp", podIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := other.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	rules, err := contract.ParseEgressAllow(allowed.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	f.gcfg.Filter = EgressFilter(rules)
	f.attach(t, Limits{})

	c, err := f.enc.DialContext(context.Background(), "tcp", allowed.Addr().String())
	if err != nil {
		t.Fatalf("allowed destination: %v", err)
	}
	c.Close()
	t0 := time.Now()
	_, err = f.enc.DialContext(context.Background(), "tcp", other.Addr().String())
	if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(t0) > time.Second {
		t.Errorf("destination not on the allowlist: %v after %v, want ECONNREFUSED at once", err, time.Since(t0))
	}
	select {
	case <-accepted:
		t.Error("a connection not on the allowlist reached the Pod network")
	case <-time.After(200 * time.Millisecond):
	}
	if f.host.Stats().TCPRefused.Load() != 0 {
		t.Error("the refused connection reached the host side's stack")
	}

	// Serving is not egress: a client not on the allowlist that connects
	// to the app gets its answers.
	srv, err := f.enc.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go echo(srv)
	port := uint16(srv.Addr().(*net.TCPAddr).Port)
	f.waitListening(t, port, true)
	var cc net.Conn
	_ = f.pod.Do(func() {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 10 * time.Second}
		cc, err = d.Dial("tcp", net.JoinHostPort(podIP, fmt.Sprint(port)))
	})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(cc, "in")
	_ = cc.(*net.TCPConn).CloseWrite()
	_ = cc.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(cc)
	cc.Close()
	if err != nil || !bytes.HasPrefix(b, []byte("in\nfrom "+clientIP+":")) {
		t.Errorf("a client of the app under an allowlist got %q, %v", b, err)
	}
}

// TestIngressUDP: a declared UDP port, published by the caller, reaches
// the app's UDP socket with the client's own address as source, and the
// app's answer reaches the client.
func TestIngressUDP(t *testing.T) {
	f := newFixture(t, Limits{})
	app, err := f.enc.ListenPacket("udp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := app.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = app.WriteTo(append([]byte(from.String()+" "), buf[:n]...), from)
		}
	}()
	port := uint16(app.LocalAddr().(*net.UDPAddr).Port)
	// Bound to the Pod IP: the pod namespace here has two addresses on lo,
	// and a wildcard socket would answer from the other one.
	pub, err := f.pod.ListenPacket("udp", net.JoinHostPort(podIP, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	f.host.PublishUDP(pub, port)
	var c net.Conn
	_ = f.pod.Do(func() {
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(clientIP)}}
		c, err = d.Dial("udp", net.JoinHostPort(podIP, fmt.Sprint(port)))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for i := range 2 {
		_, _ = fmt.Fprintf(c, "q%d", i)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if want := fmt.Sprintf("%s q%d", c.LocalAddr(), i); string(buf[:n]) != want {
			t.Errorf("answer %q, want %q (the app sees the client's address)", buf[:n], want)
		}
	}
}
