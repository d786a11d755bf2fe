package podnet

import (
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// resetFor returns the TCP reset that refuses pkt when pkt is a TCP SYN
// (the first packet of a connect), so that the app's connect fails at once
// with ECONNREFUSED; nil for any other packet (which is just dropped).
func resetFor(pkt []byte) []byte {
	ip := header.IPv4(pkt)
	if len(pkt) < header.IPv4MinimumSize || !ip.IsValid(len(pkt)) || ip.TransportProtocol() != header.TCPProtocolNumber || ip.More() || ip.FragmentOffset() != 0 {
		return nil
	}
	t := header.TCP(ip.Payload())
	if len(t) < header.TCPMinimumSize || t.Flags()&header.TCPFlagSyn == 0 || t.Flags()&header.TCPFlagAck != 0 {
		return nil
	}
	out := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
	rip := header.IPv4(out)
	rip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(out)),
		TTL:         64,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     ip.DestinationAddress(),
		DstAddr:     ip.SourceAddress(),
	})
	rip.SetChecksum(^rip.CalculateChecksum())
	rt := header.TCP(out[header.IPv4MinimumSize:])
	rt.Encode(&header.TCPFields{
		SrcPort:    t.DestinationPort(),
		DstPort:    t.SourcePort(),
		SeqNum:     0,
		AckNum:     t.SequenceNumber() + 1,
		DataOffset: header.TCPMinimumSize,
		Flags:      header.TCPFlagRst | header.TCPFlagAck,
	})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, rip.SourceAddress(), rip.DestinationAddress(), uint16(header.TCPMinimumSize))
	rt.SetChecksum(^rt.CalculateChecksum(xsum))
	return out
}
