package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// Version is the control protocol version; init and host must agree.
const Version = 1

const (
	// ParentCID is the parent instance's vsock CID as an enclave sees it.
	ParentCID = 3
	// HeartbeatCID and HeartbeatPort are where init sends the Nitro boot
	// heartbeat (the parent instance, as nitro-cli listens).
	HeartbeatCID  = ParentCID
	HeartbeatPort = 9000
	// HeartbeatByte is sent by init and echoed by the host.
	HeartbeatByte = 0xB7
	// PortName is the virtio-serial port name of the channel in emulation
	// (found by init under /sys/class/virtio-ports/*/name).
	PortName = "nitropod.0"
)

// CopyBufferSize is the buffer both ends use to copy stdio and forwarded
// connections: large writes make large yamux frames (fewer headers, window
// updates and syscalls per byte).
const CopyBufferSize = 256 << 10

// MaxFrame bounds one framed message; larger frames are rejected.
const MaxFrame = 1 << 20

// Stream kinds, the Kind of a Header.
const (
	KindControl = "control"
	KindStdin   = "stdin"
	KindStdout  = "stdout"
	KindStderr  = "stderr"
	KindForward = "forward"
)

// Header is the first frame on every stream, written by the host.
type Header struct {
	Kind string `json:"kind"`
	// Port is the enclave TCP port of a forward stream.
	Port uint16 `json:"port,omitempty"`
}

// Message types on the control stream.
const (
	MsgHello   = "hello"   // both ways, first: Version
	MsgStart   = "start"   // host → init: run the app
	MsgStarted = "started" // init → host: the app runs as PID
	MsgSignal  = "signal"  // host → init: deliver Signal to the app
	MsgExit    = "exit"    // init → host: the app ended with Code / Signal
	MsgError   = "error"   // init → host: Stage failed with Error
	MsgBye     = "bye"     // host → init: output received, power off
	MsgClock   = "clock"   // init → host: what time is it; host → init: Time (clock.go)
	MsgStats   = "stats"   // init → host: the enclave's CPU and memory use (clock.go)
)

// Message is one control message.
type Message struct {
	Type    string `json:"type"`
	Version int    `json:"version,omitempty"`
	PID     int    `json:"pid,omitempty"`
	// Signal is a Linux signal number (for signal and exit).
	Signal int `json:"signal,omitempty"`
	// Code is the exit code (for exit): the app's status, or 128+Signal.
	Code  int    `json:"code,omitempty"`
	Stage string `json:"stage,omitempty"`
	// OOMKilled (for exit) is set when the enclave kernel's OOM killer
	// killed the app. Older peers leave it out and ignore it.
	OOMKilled bool   `json:"oomKilled,omitempty"`
	Error     string `json:"error,omitempty"`
	// Features (in the host's hello) are the optional messages the host
	// answers; init uses a feature only when the host named it, so new
	// init and an older host (or the reverse) still work together.
	Features []string `json:"features,omitempty"`
	// Time (host → init, for clock) is the host's wall clock in Unix ns.
	Time int64 `json:"time,omitempty"`
	// Stats (for stats) is what init measured.
	Stats *Stats `json:"stats,omitempty"`
}

// WriteFrame writes v as one length-prefixed JSON frame.
func WriteFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding frame: %w", err)
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(b), MaxFrame)
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("writing frame: %w", err)
	}
	return nil
}

// ReadFrame reads one length-prefixed JSON frame into v. It returns io.EOF
// when the stream ends cleanly before a frame.
func ReadFrame(r io.Reader, v any) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		return fmt.Errorf("reading frame length: %w", err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", size, MaxFrame)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("reading frame: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decoding frame: %w", err)
	}
	return nil
}

// muxConfig is the yamux configuration of both ends. Keepalives are off: the
// host learns that an enclave died from its backend, and a guest slowed down
// by emulation must not be declared dead. Windows are large for throughput.
func muxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 2 * time.Minute
	c.MaxStreamWindowSize = 4 << 20
	c.StreamCloseTimeout = 0
	c.StreamOpenTimeout = 2 * time.Minute
	c.AcceptBacklog = 1024
	c.LogOutput = io.Discard
	return c
}
