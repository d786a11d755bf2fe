package podnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/nitropod/nitropod/enclave/agent"
)

// Limits bound what the enclave (or a flood of clients) can make the host
// side hold. Zero fields take the defaults below.
type Limits struct {
	// MaxTCP is the number of TCP connections (egress and ingress together)
	// open at once; a connection over it is refused (RST to the enclave,
	// closed for a client).
	MaxTCP int
	// MaxUDP is the number of UDP flows (enclave address:port → destination)
	// open at once; datagrams of a new flow over it are dropped.
	MaxUDP int
	// UDPIdle closes a UDP flow after this long without a datagram.
	UDPIdle time.Duration
	// DialTimeout bounds an egress connect from the Pod's namespace.
	DialTimeout time.Duration
	// Queue is the number of packets queued towards the enclave; more are
	// dropped (TCP retransmits them).
	Queue int
}

// Default limits.
const (
	DefaultMaxTCP      = 4096
	DefaultMaxUDP      = 1024
	DefaultUDPIdle     = 60 * time.Second
	DefaultDialTimeout = 30 * time.Second
	DefaultQueue       = 1024
	// copyBuf is the buffer of each direction of a connection's copy.
	copyBuf = 32 << 10
	// tcpBufMax bounds one connection's send and receive buffers inside
	// the stack.
	tcpBufMax = 1 << 20
)

func (l *Limits) defaults() {
	if l.MaxTCP <= 0 {
		l.MaxTCP = DefaultMaxTCP
	}
	if l.MaxUDP <= 0 {
		l.MaxUDP = DefaultMaxUDP
	}
	if l.UDPIdle <= 0 {
		l.UDPIdle = DefaultUDPIdle
	}
	if l.DialTimeout <= 0 {
		l.DialTimeout = DefaultDialTimeout
	}
	if l.Queue <= 0 {
		l.Queue = DefaultQueue
	}
}

// Network is where the host side's sockets live: the Pod's network
// namespace (NS) or, with nil functions, the launcher's own.
type Network interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	Listen(network, addr string) (net.Listener, error)
}

// HostConfig configures a Host.
type HostConfig struct {
	// Addr is the enclave's address (the Pod IP); zero is DefaultAddr.
	Addr netip.Addr
	// MTU of the link; 0 is DefaultMTU.
	MTU int
	// Net dials egress connections and opens ingress listeners; nil uses
	// the launcher's own namespace.
	Net Network
	// AutoListen opens a listener on every port of the Pod's namespace the
	// app listens on (reported by init), so that every listening port is
	// reachable on the Pod IP, and closes it when the app stops listening.
	AutoListen bool
	// Limits bound the host side's state.
	Limits Limits
	// Logf receives diagnostics; nil discards them.
	Logf func(format string, args ...any)
}

// Host is the host side of the enclave's network: a gVisor network stack
// whose one link is the enclave's interface, carried over the agent channel.
type Host struct {
	cfg   HostConfig
	addr  tcpip.Address
	stack *stack.Stack
	ep    *channel.Endpoint
	ctx   context.Context
	stop  context.CancelFunc

	tcpSlots chan struct{}
	udpSlots chan struct{}

	mu           sync.Mutex
	listeners    map[uint16]net.Listener // AutoListen's, by port
	fixed        map[uint16]bool         // ports published by the caller
	published    []net.Listener          // their listeners, closed by Close
	publishedUDP []net.PacketConn        // PublishUDP's sockets, closed by Close
	closed       bool
	wg           sync.WaitGroup

	stats Stats
}

// Stats counts what the host side did (for tests and logs).
type Stats struct {
	TCPRefused  atomic.Int64 // egress connections refused (RST) for lack of a slot or a failed dial
	UDPDropped  atomic.Int64 // datagrams dropped for lack of a flow slot
	PacketsDrop atomic.Int64 // packets dropped towards the enclave (queue full)
}

type direct struct{}

func (direct) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}
func (direct) Listen(network, addr string) (net.Listener, error) { return net.Listen(network, addr) }

const nicID = 1

// NewHost builds the host side's stack. Attach connects it to an enclave.
func NewHost(cfg HostConfig) (*Host, error) {
	if !cfg.Addr.IsValid() {
		cfg.Addr = DefaultAddr
	}
	if !cfg.Addr.Is4() {
		return nil, fmt.Errorf("enclave address %s: only IPv4 is supported", cfg.Addr)
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < 576 || cfg.MTU > MaxPacket {
		return nil, fmt.Errorf("MTU %d outside 576..%d", cfg.MTU, MaxPacket)
	}
	if cfg.Net == nil {
		cfg.Net = direct{}
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	cfg.Limits.defaults()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
		HandleLocal:        false,
	})
	ep := channel.New(cfg.Limits.Queue, uint32(cfg.MTU), "")
	// Packets from the enclave were checksummed by its kernel and crossed a
	// reliable channel (vsock or virtio-serial, under yamux): verifying
	// them again costs a pass over every byte for nothing.
	ep.LinkEPCapabilities |= stack.CapabilityRXChecksumOffload
	if err := s.CreateNIC(nicID, ep); err != nil {
		s.Close()
		return nil, fmt.Errorf("creating the stack's link: %s", err)
	}
	// The stack answers for every address (it stands for the whole Pod
	// network) and sends from any (an ingress connection carries its
	// client's address).
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		s.Close()
		return nil, fmt.Errorf("promiscuous mode: %s", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		s.Close()
		return nil, fmt.Errorf("spoofing: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 128 << 10, Max: tcpBufMax}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 128 << 10, Max: tcpBufMax}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)

	ctx, stop := context.WithCancel(context.Background())
	h := &Host{
		cfg:       cfg,
		addr:      tcpip.AddrFrom4(cfg.Addr.As4()),
		stack:     s,
		ep:        ep,
		ctx:       ctx,
		stop:      stop,
		tcpSlots:  make(chan struct{}, cfg.Limits.MaxTCP),
		udpSlots:  make(chan struct{}, cfg.Limits.MaxUDP),
		listeners: map[uint16]net.Listener{},
		fixed:     map[uint16]bool{},
	}
	tf := tcp.NewForwarder(s, 0, 1024, h.egressTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tf.HandlePacket)
	uf := udp.NewForwarder(s, h.egressUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, uf.HandlePacket)
	return h, nil
}

// Config is what init is told on the packet stream.
func (h *Host) Config() Config {
	return Config{Addr: h.cfg.Addr.String(), MTU: h.cfg.MTU}
}

// Stats returns the host side's counters.
func (h *Host) Stats() *Stats { return &h.stats }

// ErrUnsupported is Attach's error when the enclave's init does not serve
// the network streams (an EIF built by an older nitropod).
var ErrUnsupported = errors.New("the enclave's init predates the enclave network (rebuild the EIF with this nitropod)")

// Opener opens agent streams (agent.Client.OpenStream).
type Opener interface {
	OpenStream(kind string) (net.Conn, error)
}

// Attach opens the packet and ports streams to init, sends the interface
// configuration, waits until init reports the interface up, and then
// carries packets until the channel or the Host is closed.
func (h *Host) Attach(ctx context.Context, o Opener) error {
	pkts, err := o.OpenStream(KindPackets)
	if err != nil {
		return fmt.Errorf("opening the network stream: %w", err)
	}
	if err := agent.WriteFrame(pkts, h.Config()); err != nil {
		pkts.Close()
		return fmt.Errorf("configuring the enclave's network: %w", err)
	}
	var r Ready
	done := make(chan error, 1)
	go func() { done <- agent.ReadFrame(pkts, &r) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		pkts.Close()
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) {
		// Init closed the stream unread: it predates the network.
		pkts.Close()
		return ErrUnsupported
	}
	if err != nil {
		pkts.Close()
		return fmt.Errorf("waiting for the enclave's network: %w", err)
	}
	if r.Error != "" {
		pkts.Close()
		return fmt.Errorf("the enclave could not set up its network: %s", r.Error)
	}
	h.Carry(pkts)
	if h.cfg.AutoListen {
		ports, err := o.OpenStream(KindPorts)
		if err != nil {
			return fmt.Errorf("opening the ports stream: %w", err)
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.followPorts(ports)
		}()
	}
	return nil
}

// Carry moves packets between the stack and conn (framed with
// WritePacket) until either ends.
func (h *Host) Carry(conn io.ReadWriteCloser) {
	h.wg.Add(2)
	go func() { // enclave → stack
		defer h.wg.Done()
		defer conn.Close()
		br := bufio.NewReaderSize(conn, 256<<10)
		buf := make([]byte, MaxPacket)
		for {
			p, err := ReadPacket(br, buf)
			if err != nil {
				return
			}
			if len(p) < header.IPv4MinimumSize || header.IPVersion(p) != header.IPv4Version {
				continue
			}
			pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
			h.ep.InjectInbound(ipv4.ProtocolNumber, pkb)
			pkb.DecRef()
		}
	}()
	go func() { // stack → enclave
		defer h.wg.Done()
		defer conn.Close()
		// Packets already queued go out in one write (fewer channel
		// frames and syscalls), up to batchBytes.
		var batch []byte
		for {
			pkb := h.ep.ReadContext(h.ctx)
			if pkb == nil {
				return
			}
			batch = batch[:0]
			for pkb != nil {
				batch = appendPacket(batch, pkb.AsSlices())
				pkb.DecRef()
				if len(batch) >= batchBytes {
					break
				}
				pkb = h.ep.Read()
			}
			if _, err := conn.Write(batch); err != nil {
				return
			}
		}
	}()
}

func fromTCPIP(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}

// egressDest is where an enclave connection to dst goes in the Pod's
// namespace: LoopbackPeer stands for the Pod's 127.0.0.1.
func egressDest(dst netip.Addr) netip.Addr {
	if dst == LoopbackPeer {
		return netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return dst
}

func (h *Host) egressTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	select {
	case h.tcpSlots <- struct{}{}:
	default:
		h.stats.TCPRefused.Add(1)
		r.Complete(true)
		return
	}
	release := func() { <-h.tcpSlots }
	dst := netip.AddrPortFrom(egressDest(fromTCPIP(id.LocalAddress)), id.LocalPort)
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.Limits.DialTimeout)
	out, err := h.cfg.Net.DialContext(ctx, "tcp", dst.String())
	cancel()
	if err != nil {
		release()
		h.stats.TCPRefused.Add(1)
		// Refused or unreachable: a RST, so the app's connect fails at
		// once (ECONNREFUSED) instead of retrying its SYN until it gives
		// up. A timeout leaves the app's own connect timeout to act.
		r.Complete(!errors.Is(err, context.DeadlineExceeded))
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		release()
		out.Close()
		r.Complete(true)
		return
	}
	r.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	in := gonet.NewTCPConn(&wq, ep)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer release()
		Splice(in, out)
	}()
}

// DialEnclave connects to the enclave's TCP port as client (the address
// the app sees as its peer; loopback clients are shown as LoopbackPeer).
func (h *Host) DialEnclave(ctx context.Context, client netip.AddrPort, port uint16) (net.Conn, error) {
	ip := client.Addr().Unmap()
	if ip.IsLoopback() || !ip.Is4() || ip == h.cfg.Addr {
		// The Pod's own loopback or address, or an IPv6 client: the
		// enclave sees the Pod's loopback peer address.
		ip = LoopbackPeer
	}
	local := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(ip.As4()), Port: client.Port()}
	remote := tcpip.FullAddress{NIC: nicID, Addr: h.addr, Port: port}
	c, err := gonet.DialTCPWithBind(ctx, h.stack, local, remote, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("connecting to enclave port %d: %w", port, err)
	}
	return c, nil
}

// ServeListener accepts connections on l until it is closed and connects
// each to port inside the enclave, with the client's address as source.
func (h *Host) ServeListener(l net.Listener, port uint16) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			h.cfg.Logf("accepting on %s: %v", l.Addr(), err)
			return
		}
		select {
		case h.tcpSlots <- struct{}{}:
		default:
			c.Close()
			continue
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer func() { <-h.tcpSlots }()
			client, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			ctx, cancel := context.WithTimeout(h.ctx, h.cfg.Limits.DialTimeout)
			in, err := h.DialEnclave(ctx, client, port)
			cancel()
			if err != nil {
				c.Close()
				return
			}
			Splice(c, in)
		}()
	}
}

// Publish serves l (already bound by the caller, in any namespace) as the
// enclave's port: AutoListen then leaves that port alone.
func (h *Host) Publish(l net.Listener, port uint16) {
	h.mu.Lock()
	h.fixed[port] = true
	h.published = append(h.published, l)
	h.mu.Unlock()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.ServeListener(l, port)
	}()
}

// followPorts reads init's listening-port reports and keeps one listener
// in the Pod's namespace per port.
func (h *Host) followPorts(s net.Conn) {
	defer s.Close()
	go func() { <-h.ctx.Done(); s.Close() }()
	for {
		var p Ports
		if err := agent.ReadFrame(s, &p); err != nil {
			return
		}
		h.setPorts(p.TCP)
	}
}

// MaxListenPorts bounds the listeners AutoListen opens.
const MaxListenPorts = 256

func (h *Host) setPorts(ports []uint16) {
	want := map[uint16]bool{}
	for _, p := range ports {
		if p != 0 && len(want) < MaxListenPorts {
			want[p] = true
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for p, l := range h.listeners {
		if !want[p] {
			l.Close()
			delete(h.listeners, p)
			h.cfg.Logf("enclave stopped listening on port %d", p)
		}
	}
	for p := range want {
		if h.fixed[p] || h.listeners[p] != nil {
			continue
		}
		l, err := h.cfg.Net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			h.cfg.Logf("publishing enclave port %d: %v", p, err)
			continue
		}
		h.listeners[p] = l
		h.cfg.Logf("enclave listens on port %d: published", p)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.ServeListener(l, p)
		}()
	}
}

// Listening returns the ports AutoListen has open.
func (h *Host) Listening() []uint16 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ps []uint16
	for p := range h.listeners {
		ps = append(ps, p)
	}
	return ps
}

// Close stops everything the Host runs and waits for it.
func (h *Host) Close() {
	h.mu.Lock()
	h.closed = true
	for p, l := range h.listeners {
		l.Close()
		delete(h.listeners, p)
	}
	for _, l := range h.published {
		l.Close()
	}
	for _, pc := range h.publishedUDP {
		pc.Close()
	}
	h.mu.Unlock()
	h.stop()
	h.ep.Close()
	h.stack.Close()
	h.wg.Wait()
	h.stack.Wait()
}
