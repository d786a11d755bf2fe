package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// KindNSM is the stream kind that carries Nitro Secure Module requests in
// emulation: the host opens it (when it emulates an NSM for the enclave),
// init writes each request that an app made on /dev/nsm as one binary frame
// (4-byte big-endian length, then the CBOR request) and the host answers
// each with one frame holding the CBOR response. Requests on the stream are
// strictly one at a time. Init from before this kind closes the stream,
// and a host from before it never opens one (the app then gets NSM
// InternalError responses), so the control protocol version is unchanged.
const KindNSM = "nsm"

// MaxNSMFrame bounds one NSM frame either way (requests are at most 4 KiB
// and responses 12 KiB; the bound leaves room).
const MaxNSMFrame = 64 << 10

// nsmTimeout bounds one NSM round trip; an expired one breaks the stream.
const nsmTimeout = time.Minute

func writeBinFrame(w io.Writer, b []byte) error {
	if len(b) > MaxNSMFrame {
		return fmt.Errorf("NSM frame of %d bytes exceeds %d", len(b), MaxNSMFrame)
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err := w.Write(buf)
	return err
}

func readBinFrame(r io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > MaxNSMFrame {
		return nil, fmt.Errorf("NSM frame of %d bytes exceeds %d", size, MaxNSMFrame)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// ServeNSM opens the NSM stream and answers each request with handle until
// the stream or the channel closes. Call it once, after Connect, in its own
// goroutine; it returns nil when the channel closed.
func (c *Client) ServeNSM(handle func(req []byte) []byte) error {
	s, err := c.open(Header{Kind: KindNSM})
	if err != nil {
		if c.sess.IsClosed() {
			return nil
		}
		return fmt.Errorf("opening NSM stream: %w", err)
	}
	defer s.Close()
	for {
		req, err := readBinFrame(s)
		if err != nil {
			if errors.Is(err, io.EOF) || c.sess.IsClosed() {
				return nil
			}
			return fmt.Errorf("reading NSM request: %w", err)
		}
		if err := writeBinFrame(s, handle(req)); err != nil {
			if c.sess.IsClosed() {
				return nil
			}
			return fmt.Errorf("writing NSM response: %w", err)
		}
	}
}

func (g *Guest) nsmStream(s *yamux.Stream) {
	g.mu.Lock()
	if g.nsm != nil {
		g.mu.Unlock()
		s.Close()
		return
	}
	g.nsm = s
	g.mu.Unlock()
	g.nsmOnce.Do(func() { close(g.nsmCh) })
}

// ErrNoNSM is returned by NSM when the host serves no NSM.
var ErrNoNSM = errors.New("the host serves no NSM to this enclave")

// NSM sends one CBOR request to the host's emulated NSM and returns its CBOR
// response. It waits for the host's NSM stream until ctx ends (ErrNoNSM);
// calls are serialised. A failed round trip closes the stream (later calls
// fail too), as its framing can no longer be trusted.
func (g *Guest) NSM(ctx context.Context, req []byte) ([]byte, error) {
	select {
	case <-g.nsmCh:
	case <-g.closed:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, fmt.Errorf("%w (%w)", ErrNoNSM, ctx.Err())
	}
	g.nsmMu.Lock()
	defer g.nsmMu.Unlock()
	g.mu.Lock()
	s := g.nsm
	broken := g.nsmBroken
	g.mu.Unlock()
	if broken {
		return nil, errors.New("the NSM stream broke earlier")
	}
	_ = s.SetDeadline(time.Now().Add(nsmTimeout))
	err := writeBinFrame(s, req)
	var resp []byte
	if err == nil {
		resp, err = readBinFrame(s)
	}
	if err != nil {
		g.mu.Lock()
		g.nsmBroken = true
		g.mu.Unlock()
		s.Close()
		return nil, fmt.Errorf("NSM request over the agent channel: %w", err)
	}
	return resp, nil
}
