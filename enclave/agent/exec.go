package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// KindExec is the stream of one exec: a process that the host asks init to
// run next to the app (kubectl exec, exec probes and hooks). The host opens
// the stream, writes the Header and an ExecRequest frame, and then both
// ends exchange exec messages (WriteExecMsg/ReadExecMsg) until init sent
// ExecExit or ExecError and closed it:
//
//   - host → init: ExecStdin (bytes), ExecStdinEOF, ExecResize (rows and
//     columns, big-endian uint16 each), ExecSignal (a big-endian uint32
//     signal number);
//   - init → host: ExecStarted (the pid, big-endian uint32), ExecStdout and
//     ExecStderr (bytes), then exactly one of ExecExit (code and signal,
//     big-endian uint32 each) or ExecError (a UTF-8 message: a refusal or a
//     failure to start).
//
// One stream carries everything of one exec, so its output always arrives
// before its exit status. An exec message is a type byte, a big-endian
// uint32 length and at most MaxExecPayload bytes; unlike the control
// stream it is binary, so that output is not re-encoded.
const KindExec = "exec"

// Exec message types.
const (
	ExecStdin    byte = 1
	ExecStdinEOF byte = 2
	ExecResize   byte = 3
	ExecSignal   byte = 4

	ExecStarted byte = 10
	ExecStdout  byte = 11
	ExecStderr  byte = 12
	ExecExit    byte = 13
	ExecError   byte = 14
)

// MaxExecPayload bounds one exec message's payload.
const MaxExecPayload = 64 << 10

// Bounds init applies to an ExecRequest (it also is one frame, so at most
// MaxFrame).
const (
	MaxExecRequestArgs  = 4096
	MaxExecRequestBytes = 256 << 10
)

// ExecRequest is the first frame after the Header of an exec stream. The
// process runs with the app's measured environment, user, working
// directory and security context: the host names only the command.
type ExecRequest struct {
	Args []string `json:"args"`
	// TTY runs the process on a new pseudo-terminal inside the enclave
	// (stdout and stderr are then one stream, ExecStdout), of Rows x Cols
	// when both are set.
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Stdin says the host sends input; without it the process's stdin is
	// empty.
	Stdin bool `json:"stdin,omitempty"`
}

// Check reports what is wrong with an exec request.
func (r ExecRequest) Check() error {
	if len(r.Args) == 0 || r.Args[0] == "" {
		return errors.New("exec request has no command")
	}
	if len(r.Args) > MaxExecRequestArgs {
		return fmt.Errorf("exec request has %d arguments, more than the %d allowed", len(r.Args), MaxExecRequestArgs)
	}
	n := 0
	for _, a := range r.Args {
		n += len(a)
	}
	if n > MaxExecRequestBytes {
		return fmt.Errorf("exec request arguments are %d bytes, more than the %d allowed", n, MaxExecRequestBytes)
	}
	return nil
}

// ExecConn is one end of an exec stream. Writes are serialised; only one
// goroutine may read.
type ExecConn struct {
	s   io.ReadWriteCloser
	wmu sync.Mutex
	hdr [5]byte
}

// NewExecConn wraps an exec stream (after its Header and ExecRequest).
func NewExecConn(s io.ReadWriteCloser) *ExecConn { return &ExecConn{s: s} }

// Write writes one exec message of type t; a payload longer than
// MaxExecPayload is split into several messages of the same type.
func (c *ExecConn) Write(t byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for first := true; first || len(p) > 0; first = false {
		n := min(len(p), MaxExecPayload)
		var h [5]byte
		h[0] = t
		binary.BigEndian.PutUint32(h[1:], uint32(n))
		if _, err := c.s.Write(append(h[:], p[:n]...)); err != nil {
			return fmt.Errorf("writing exec message: %w", err)
		}
		p = p[n:]
	}
	return nil
}

// Read reads the next exec message. The payload is valid until the next
// Read. It returns io.EOF when the stream ended between messages.
func (c *ExecConn) Read(buf []byte) (t byte, p []byte, err error) {
	if _, err := io.ReadFull(c.s, c.hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, nil, io.EOF
		}
		return 0, nil, fmt.Errorf("reading exec message: %w", err)
	}
	n := binary.BigEndian.Uint32(c.hdr[1:])
	if n > MaxExecPayload {
		return 0, nil, fmt.Errorf("exec message of %d bytes exceeds %d", n, MaxExecPayload)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(c.s, buf); err != nil {
		return 0, nil, fmt.Errorf("reading exec message: %w", err)
	}
	return c.hdr[0], buf, nil
}

// Close closes the stream (on yamux, a half-close: the peer reads EOF).
func (c *ExecConn) Close() error { return c.s.Close() }

// Uint32s encodes vs big-endian, the payload of ExecStarted, ExecExit,
// ExecSignal.
func Uint32s(vs ...uint32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.BigEndian.PutUint32(b[4*i:], v)
	}
	return b
}

// ParseUint32s decodes n big-endian uint32s from p.
func ParseUint32s(p []byte, n int) ([]uint32, error) {
	if len(p) != 4*n {
		return nil, fmt.Errorf("exec message payload of %d bytes, want %d", len(p), 4*n)
	}
	vs := make([]uint32, n)
	for i := range vs {
		vs[i] = binary.BigEndian.Uint32(p[4*i:])
	}
	return vs, nil
}

// ResizePayload encodes a terminal size for ExecResize.
func ResizePayload(rows, cols uint16) []byte {
	var b [4]byte
	binary.BigEndian.PutUint16(b[:], rows)
	binary.BigEndian.PutUint16(b[2:], cols)
	return b[:]
}

// ParseResize decodes an ExecResize payload.
func ParseResize(p []byte) (rows, cols uint16, err error) {
	if len(p) != 4 {
		return 0, 0, fmt.Errorf("resize payload of %d bytes, want 4", len(p))
	}
	return binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:]), nil
}

// Exec asks init to run a process: it opens an exec stream and sends req.
// Init answers with ExecStarted or ExecError.
func (c *Client) Exec(req ExecRequest) (*ExecConn, error) {
	if err := req.Check(); err != nil {
		return nil, err
	}
	s, err := c.open(Header{Kind: KindExec})
	if err != nil {
		return nil, fmt.Errorf("opening exec stream: %w", err)
	}
	if err := WriteFrame(s, req); err != nil {
		s.Close()
		return nil, fmt.Errorf("sending exec request: %w", err)
	}
	return NewExecConn(s), nil
}

// ExecHandler runs one exec inside the enclave; it owns conn and closes it.
type ExecHandler func(req ExecRequest, conn *ExecConn)

// SetExecHandler makes init answer exec streams with h; until it is set
// (the app's filesystem is not ready), exec streams are refused.
func (g *Guest) SetExecHandler(h ExecHandler) {
	g.mu.Lock()
	g.execHandler = h
	g.mu.Unlock()
}

func (g *Guest) execStream(s *yamux.Stream) {
	c := NewExecConn(s)
	var req ExecRequest
	_ = s.SetReadDeadline(time.Now().Add(time.Minute))
	err := ReadFrame(s, &req)
	_ = s.SetReadDeadline(time.Time{})
	if err == nil {
		err = req.Check()
	}
	if err != nil {
		_ = c.Write(ExecError, []byte(err.Error()))
		c.Close()
		return
	}
	g.mu.Lock()
	h := g.execHandler
	g.mu.Unlock()
	if h == nil {
		_ = c.Write(ExecError, []byte("the enclave is still starting its app: exec once the container runs"))
		c.Close()
		return
	}
	h(req, c)
}
