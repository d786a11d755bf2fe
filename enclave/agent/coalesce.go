package agent

import (
	"encoding/binary"
	"io"
	"net"
)

// yamux frame header (hashicorp/yamux spec.md): version, type, flags (2),
// stream ID (4), length (4). A data frame's body follows in the next Write.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// coalescer joins each yamux data frame's header with its body into one
// vectored write: yamux writes them separately, which doubles the syscalls
// per frame. Header-only frames (window updates, pings) pass at once.
type coalescer struct {
	io.ReadWriteCloser
	hdr     [yamuxHeaderSize]byte
	pending bool
}

func (c *coalescer) Write(p []byte) (int, error) {
	if c.pending {
		c.pending = false
		bufs := net.Buffers{c.hdr[:], p}
		n, err := bufs.WriteTo(c.ReadWriteCloser)
		n -= yamuxHeaderSize
		if n < 0 {
			n = 0
		}
		return int(n), err
	}
	if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		copy(c.hdr[:], p)
		c.pending = true
		return len(p), nil
	}
	return c.ReadWriteCloser.Write(p)
}
