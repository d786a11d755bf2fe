package podnet

import (
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nitropod/nitropod/contract"
)

// Filter is applied by init to the enclave's packets: Outbound decides
// whether a packet the app sends may leave, Inbound sees every packet
// arriving for the app (so that answers to connections made to the app
// are let out).
type Filter interface {
	Outbound(pkt []byte) bool
	Inbound(pkt []byte)
}

// Bounds of the inbound-flow table of an Egress filter.
const (
	maxInboundFlows = 1 << 16
	inboundIdle     = 10 * time.Minute
)

// flowKey names a flow made to the app: the protocol, the client's address
// and port, and the app's port.
type flowKey struct {
	proto  uint8
	remote netip.AddrPort
	local  uint16
}

// Egress enforces an allowlist: a packet leaves the enclave when the rules
// allow its destination address and port (TCP and UDP; other protocols
// need a rule without a port), when it goes to the Pod's own loopback
// (LoopbackPeer, which a runc container of the Pod reaches too), or when it
// answers a flow a client opened to the app (a TCP connect, a UDP datagram
// to the app's port): serving clients is not egress. That answer path is
// exact to the client's address and port and the app's port, so the app
// cannot use it to reach anyone else.
type Egress struct {
	rules contract.EgressRules

	mu    sync.Mutex
	flows map[flowKey]time.Time // last seen
}

// EgressFilter returns the filter for rules; nil rules allow everything.
func EgressFilter(rules contract.EgressRules) *Egress {
	return &Egress{rules: rules, flows: map[flowKey]time.Time{}}
}

type parsed struct {
	proto            uint8
	src, dst         netip.Addr
	sport, dport     uint16
	syn, ack, closes bool
}

func parse(pkt []byte) (parsed, bool) {
	ip := header.IPv4(pkt)
	if len(pkt) < header.IPv4MinimumSize || !ip.IsValid(len(pkt)) {
		return parsed{}, false
	}
	p := parsed{
		proto: uint8(ip.TransportProtocol()),
		src:   netip.AddrFrom4(ip.SourceAddress().As4()),
		dst:   netip.AddrFrom4(ip.DestinationAddress().As4()),
	}
	payload := ip.Payload()
	if ip.FragmentOffset() != 0 {
		return p, true
	}
	switch ip.TransportProtocol() {
	case header.TCPProtocolNumber:
		if len(payload) >= header.TCPMinimumSize {
			t := header.TCP(payload)
			p.sport, p.dport = t.SourcePort(), t.DestinationPort()
			f := t.Flags()
			p.syn, p.ack = f&header.TCPFlagSyn != 0, f&header.TCPFlagAck != 0
			p.closes = f&header.TCPFlagRst != 0
		}
	case header.UDPProtocolNumber:
		if len(payload) >= header.UDPMinimumSize {
			u := header.UDP(payload)
			p.sport, p.dport = u.SourcePort(), u.DestinationPort()
		}
	}
	return p, true
}

// Inbound records flows clients open to the app.
func (e *Egress) Inbound(pkt []byte) {
	if e.rules == nil {
		return
	}
	p, ok := parse(pkt)
	if !ok || p.dport == 0 {
		return
	}
	opens := p.proto == uint8(header.UDPProtocolNumber) || p.proto == uint8(header.TCPProtocolNumber) && p.syn && !p.ack
	k := flowKey{p.proto, netip.AddrPortFrom(p.src, p.sport), p.dport}
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, known := e.flows[k]; known {
		if p.closes {
			delete(e.flows, k)
		} else {
			e.flows[k] = now
		}
		return
	}
	if !opens {
		return
	}
	if len(e.flows) >= maxInboundFlows {
		for fk, seen := range e.flows {
			if now.Sub(seen) > inboundIdle {
				delete(e.flows, fk)
			}
		}
		if len(e.flows) >= maxInboundFlows {
			return // full: the app's answers are refused like any egress
		}
	}
	e.flows[k] = now
}

// Outbound says whether a packet the app sends may leave the enclave.
func (e *Egress) Outbound(pkt []byte) bool {
	if e.rules == nil {
		return true
	}
	p, ok := parse(pkt)
	if !ok {
		return false
	}
	if p.dst == LoopbackPeer || e.rules.Allows(p.dst, p.dport) {
		return true
	}
	if p.dport == 0 {
		return false
	}
	k := flowKey{p.proto, netip.AddrPortFrom(p.dst, p.dport), p.sport}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.flows[k]; !ok {
		return false
	}
	if p.closes {
		delete(e.flows, k)
	} else {
		e.flows[k] = time.Now()
	}
	return true
}
