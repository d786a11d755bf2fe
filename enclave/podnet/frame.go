package podnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Stream kinds of the agent channel that carry the enclave's network (see
// agent.Header): the packet stream and the listening-ports stream.
const (
	KindPackets = "net"
	KindPorts   = "netports"
)

// Config is the first frame on the packet stream, host → init: how init
// sets up the enclave's interface. The host controls the Pod's network
// anyway (it carries every packet), so nothing here is trusted beyond that.
type Config struct {
	// Addr is the enclave's IPv4 address: the Pod IP, so that the app sees
	// the address its peers see.
	Addr string `json:"addr"`
	// MTU of the enclave's interface.
	MTU int `json:"mtu"`
}

// Ready is init's answer on the packet stream once the interface is up (or
// why it is not); packets follow it.
type Ready struct {
	Error string `json:"error,omitempty"`
}

// Ports is one frame on the ports stream, init → host: every TCP port the
// app listens on at an address other than loopback, in full each time the
// set changes.
type Ports struct {
	TCP []uint16 `json:"tcp"`
}

// Defaults.
const (
	// DefaultMTU is the enclave interface's MTU: large packets mean fewer
	// frames on the channel per byte (the channel is a byte stream, not a
	// wire with a size limit).
	DefaultMTU = 65520
	// MaxPacket bounds one framed packet (the 2-byte length).
	MaxPacket = 65535
)

// DefaultAddr is the enclave's address when the launcher has no Pod
// network namespace (`nitropod run`).
var DefaultAddr = netip.MustParseAddr("10.0.2.15")

// LoopbackPeer is the source address the enclave sees for a client that
// connected from the Pod's own loopback (a sidecar on 127.0.0.1), and the
// address at which the enclave reaches the Pod's loopback: the enclave has
// its own 127.0.0.1, and a packet from 127.0.0.1 arriving on its interface
// would be dropped as martian.
var LoopbackPeer = netip.MustParseAddr("169.254.1.1")

// WritePacket writes one packet as a 2-byte big-endian length and the
// bytes, in one Write (buf is scratch space of at least 2+MaxPacket bytes,
// or nil).
func WritePacket(w io.Writer, buf []byte, pkt ...[]byte) error {
	n := 0
	for _, p := range pkt {
		n += len(p)
	}
	if n > MaxPacket {
		return fmt.Errorf("packet of %d bytes exceeds %d", n, MaxPacket)
	}
	if cap(buf) < 2+n {
		buf = make([]byte, 2+n)
	}
	buf = buf[:2+n]
	binary.BigEndian.PutUint16(buf, uint16(n))
	off := 2
	for _, p := range pkt {
		off += copy(buf[off:], p)
	}
	_, err := w.Write(buf)
	return err
}

// batchBytes bounds the frames one channel write carries.
const batchBytes = 256 << 10

// appendPacket appends one framed packet (its parts joined) to b; a packet
// over MaxPacket is dropped.
func appendPacket(b []byte, parts [][]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n == 0 || n > MaxPacket {
		return b
	}
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// ReadPacket reads one packet into buf (at least MaxPacket bytes) and
// returns it.
func ReadPacket(r io.Reader, buf []byte) ([]byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(h[:]))
	if n == 0 {
		return nil, errors.New("empty packet frame")
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return nil, fmt.Errorf("reading a %d-byte packet: %w", n, err)
	}
	return buf[:n], nil
}
