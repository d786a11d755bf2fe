package podnet

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nitropod/nitropod/contract"
)

// EgressFilter is GuestConfig.Filter for an allowlist: it lets a packet
// leave the enclave when rules allow its destination address and port
// (TCP and UDP; other protocols need a rule without a port). The Pod's own
// loopback (LoopbackPeer) is always reachable, as it is for a runc
// container of the Pod. nil rules allow everything.
func EgressFilter(rules contract.EgressRules) func(pkt []byte) bool {
	if rules == nil {
		return func([]byte) bool { return true }
	}
	return func(pkt []byte) bool {
		ip := header.IPv4(pkt)
		if len(pkt) < header.IPv4MinimumSize || !ip.IsValid(len(pkt)) {
			return false
		}
		dst := netip.AddrFrom4(ip.DestinationAddress().As4())
		if dst == LoopbackPeer {
			return true
		}
		var port uint16
		payload := ip.Payload()
		switch ip.TransportProtocol() {
		case header.TCPProtocolNumber:
			if ip.FragmentOffset() == 0 && len(payload) >= header.TCPMinimumSize {
				port = header.TCP(payload).DestinationPort()
			}
		case header.UDPProtocolNumber:
			if ip.FragmentOffset() == 0 && len(payload) >= header.UDPMinimumSize {
				port = header.UDP(payload).DestinationPort()
			}
		}
		return rules.Allows(dst, port)
	}
}
