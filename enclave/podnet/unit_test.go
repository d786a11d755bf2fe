package podnet

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nitropod/nitropod/contract"
)

// Lines as the kernel writes them (trimmed after the state column).
const procTCP = `  sl  local_address rem_address   st tx_queue rx_queue
   0: 0100007F:26B6 00000000:0000 0A 00000000:00000000
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000
   2: 0F02000A:0050 00000000:0000 0A 00000000:00000000
   3: 0F02000A:0050 0701A8C0:9C40 01 00000000:00000000
   4: 0100007F:1F91 00000000:0000 0A 00000000:00000000
`

const procTCP6 = `  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 0A
   1: 0000000000000000FFFF00000100007F:0036 00000000000000000000000000000000:0000 0A
   2: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A
   3: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A
`

func TestListeningPorts(t *testing.T) {
	// 127.0.0.1:9910 and :8081 are loopback-only; the established
	// connection is not a listener; 0.0.0.0:8080 and 10.0.2.15:80 are.
	if got, want := ListeningPorts(strings.NewReader(procTCP)), []uint16{80, 8080}; !slices.Equal(got, want) {
		t.Errorf("tcp: %v, want %v", got, want)
	}
	// ::1 and ::ffff:127.0.0.1 are loopback; [::]:8080 and [::]:443 are not.
	if got, want := ListeningPorts(strings.NewReader(procTCP6)), []uint16{443, 8080}; !slices.Equal(got, want) {
		t.Errorf("tcp6: %v, want %v", got, want)
	}
	if got := ListeningPorts(strings.NewReader("garbage\n 0: zz:zz 0 0A\n")); len(got) != 0 {
		t.Errorf("garbage: %v", got)
	}
}

func TestFrames(t *testing.T) {
	var b bytes.Buffer
	if err := WritePacket(&b, nil, []byte{1, 2}, []byte{3}); err != nil {
		t.Fatal(err)
	}
	b.Write(appendPacket(nil, [][]byte{{4, 5, 6}}))
	buf := make([]byte, MaxPacket)
	for _, want := range [][]byte{{1, 2, 3}, {4, 5, 6}} {
		p, err := ReadPacket(&b, buf)
		if err != nil || !bytes.Equal(p, want) {
			t.Fatalf("ReadPacket = %v, %v; want %v", p, err, want)
		}
	}
	if err := WritePacket(&b, nil, make([]byte, MaxPacket+1)); err == nil {
		t.Error("a packet over MaxPacket was written")
	}
	if _, err := ReadPacket(bytes.NewReader([]byte{0, 0}), buf); err == nil {
		t.Error("an empty frame was accepted")
	}
}

// packet builds an IPv4 TCP (syn) or UDP packet to dst:port.
func packet(proto tcpip.TransportProtocolNumber, dst string, port uint16, syn bool) []byte {
	tl := header.UDPMinimumSize
	if proto == header.TCPProtocolNumber {
		tl = header.TCPMinimumSize
	}
	b := make([]byte, header.IPv4MinimumSize+tl)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(proto),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 2, 15}), DstAddr: tcpip.AddrFrom4(netip.MustParseAddr(dst).As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	if proto == header.TCPProtocolNumber {
		flags := header.TCPFlagAck
		if syn {
			flags = header.TCPFlagSyn
		}
		header.TCP(ip.Payload()).Encode(&header.TCPFields{SrcPort: 40000, DstPort: port, SeqNum: 1000, DataOffset: header.TCPMinimumSize, Flags: flags})
	} else {
		header.UDP(ip.Payload()).Encode(&header.UDPFields{SrcPort: 40000, DstPort: port, Length: uint16(tl)})
	}
	return b
}

func TestEgressFilter(t *testing.T) {
	rules, err := contract.ParseEgressAllow("10.96.0.10:53, 192.0.2.0/24")
	if err != nil {
		t.Fatal(err)
	}
	f := EgressFilter(rules)
	for _, tc := range []struct {
		pkt  []byte
		want bool
	}{
		{packet(header.UDPProtocolNumber, "10.96.0.10", 53, false), true},
		{packet(header.TCPProtocolNumber, "10.96.0.10", 53, true), true},
		{packet(header.TCPProtocolNumber, "10.96.0.10", 80, true), false},
		{packet(header.TCPProtocolNumber, "192.0.2.77", 80, true), true},
		{packet(header.UDPProtocolNumber, "203.0.113.1", 53, false), false},
		{packet(header.TCPProtocolNumber, LoopbackPeer.String(), 9000, true), true},
		{[]byte{0x45, 0}, false},
	} {
		if got := f.Outbound(tc.pkt); got != tc.want {
			t.Errorf("packet to %v: allowed %v, want %v", header.IPv4(tc.pkt).DestinationAddress(), got, tc.want)
		}
	}
	if !EgressFilter(nil).Outbound(packet(header.TCPProtocolNumber, "203.0.113.1", 1, true)) {
		t.Error("no allowlist must let everything out")
	}
}

// reply builds the app's answer (from 10.0.2.15:sport to dst:dport).
func reply(proto tcpip.TransportProtocolNumber, dst string, dport, sport uint16) []byte {
	b := packet(proto, dst, dport, false)
	if proto == header.TCPProtocolNumber {
		header.TCP(header.IPv4(b).Payload()).SetSourcePort(sport)
	} else {
		header.UDP(header.IPv4(b).Payload()).SetSourcePort(sport)
	}
	return b
}

// inbound builds a client's packet (from src:40000 to the app's port).
func inbound(proto tcpip.TransportProtocolNumber, src string, port uint16, syn bool) []byte {
	b := packet(proto, "10.0.2.15", port, syn)
	header.IPv4(b).SetSourceAddress(tcpip.AddrFrom4(netip.MustParseAddr(src).As4()))
	return b
}

// With an allowlist, the app still answers clients that connected to it,
// exactly them, and nobody else through that path.
func TestEgressAnswersInbound(t *testing.T) {
	rules, _ := contract.ParseEgressAllow("10.96.0.10:53")
	f := EgressFilter(rules)
	client := "192.0.2.9"
	if f.Outbound(reply(header.TCPProtocolNumber, client, 40000, 8080)) {
		t.Fatal("an answer before any connect from the client was let out")
	}
	f.Inbound(inbound(header.TCPProtocolNumber, client, 8080, true)) // SYN to :8080
	if !f.Outbound(reply(header.TCPProtocolNumber, client, 40000, 8080)) {
		t.Error("the app's answer to a client that connected was refused")
	}
	for _, p := range [][]byte{
		reply(header.TCPProtocolNumber, client, 40001, 8080), // another client port
		reply(header.TCPProtocolNumber, client, 40000, 9090), // from another app port
		reply(header.TCPProtocolNumber, "192.0.2.10", 40000, 8080),
		packet(header.TCPProtocolNumber, client, 443, true), // a connect of its own
	} {
		if f.Outbound(p) {
			t.Errorf("packet to %v:%d let out through an inbound flow", header.IPv4(p).DestinationAddress(), header.TCP(header.IPv4(p).Payload()).DestinationPort())
		}
	}
	// A non-SYN from an unknown client opens nothing.
	f.Inbound(inbound(header.TCPProtocolNumber, "192.0.2.11", 8080, false))
	if f.Outbound(reply(header.TCPProtocolNumber, "192.0.2.11", 40000, 8080)) {
		t.Error("a stray ACK opened an answer path")
	}
	// UDP: a datagram to the app's port lets its answers out.
	f.Inbound(inbound(header.UDPProtocolNumber, client, 5353, false))
	if !f.Outbound(reply(header.UDPProtocolNumber, client, 40000, 5353)) {
		t.Error("the app's UDP answer was refused")
	}
}

func TestResetFor(t *testing.T) {
	syn := packet(header.TCPProtocolNumber, "203.0.113.1", 443, true)
	rst := resetFor(syn)
	if rst == nil {
		t.Fatal("no reset for a SYN")
	}
	ip := header.IPv4(rst)
	if !ip.IsChecksumValid() || ip.SourceAddress() != header.IPv4(syn).DestinationAddress() {
		t.Errorf("reset IP header: checksum valid %v, from %v", ip.IsChecksumValid(), ip.SourceAddress())
	}
	tcp := header.TCP(ip.Payload())
	if tcp.Flags() != header.TCPFlagRst|header.TCPFlagAck || tcp.SourcePort() != 443 || tcp.DestinationPort() != 40000 || tcp.AckNumber() != 1001 {
		t.Errorf("reset: flags %v ports %d→%d ack %d", tcp.Flags(), tcp.SourcePort(), tcp.DestinationPort(), tcp.AckNumber())
	}
	if !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), 0, 0) { // no payload
		t.Error("reset: TCP checksum invalid")
	}
	for _, p := range [][]byte{packet(header.TCPProtocolNumber, "203.0.113.1", 443, false), packet(header.UDPProtocolNumber, "203.0.113.1", 53, false)} {
		if resetFor(p) != nil {
			t.Error("a reset for a packet that is not a SYN")
		}
	}
}
