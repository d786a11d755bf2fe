package nitrocli

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/mdlayher/vsock"

	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/agent"
)

// The agent channel on Nitro (see the agent package doc for the reasoning).
//
// Boot picks the enclave's CID (unless the request names one), binds
// vsock port agent.ChannelPort(CID) on every CID of this host *before*
// nitro-cli boots the enclave, and refuses to boot when it cannot: then no
// other process can hold that port when init dials it. Dial accepts on that
// port only a connection whose peer is the enclave's CID, which the
// hypervisor sets and no process on this host can forge (theirs is the
// host's own CID); every other connection is closed and logged.

// The range Boot picks enclave CIDs from when the request names none: above
// the CIDs people pick by hand, and within agent.MaxChannelCID.
const (
	minAutoCID = 1 << 16
	maxAutoCID = agent.MaxChannelCID
)

// cidAny is VMADDR_CID_ANY: a listener bound to it owns the port on every
// CID of the host, so no other socket can bind that port at all.
const cidAny = 0xFFFFFFFF

// maxLoggedRejects bounds the log lines for refused connections per boot.
const maxLoggedRejects = 8

func listenVsock(port uint32) (net.Listener, error) {
	return vsock.ListenContextID(cidAny, port, nil)
}

// randomCID picks an enclave CID in [minAutoCID, maxAutoCID].
func randomCID() (uint32, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("choosing an enclave CID: %w", err)
	}
	return minAutoCID + binary.BigEndian.Uint32(b[:])%(maxAutoCID-minAutoCID+1), nil
}

// Boot picks the enclave's CID, listens for its agent channel, then runs
// nitro-cli run-enclave (which returns after the enclave's boot heartbeat),
// starts the console when Debug and Console are set, and watches the
// enclave with describe-enclaves.
func (b *Backend) Boot(ctx context.Context, req enclave.Request) (enclave.Enclave, error) {
	if req.CID == 0 {
		cid, err := b.cfg.NewCID()
		if err != nil {
			return nil, fmt.Errorf("booting enclave: %w", err)
		}
		req.CID = cid
	}
	// Check the request before taking the port.
	fi, err := os.Stat(req.EIFPath)
	if err != nil {
		return nil, fmt.Errorf("booting enclave: %w", err)
	}
	if _, err := RunArgs(req, fi.Size()); err != nil {
		return nil, fmt.Errorf("booting enclave: %w", err)
	}
	ch, err := b.listenChannel(req.CID)
	if err != nil {
		return nil, fmt.Errorf("booting enclave: %w", err)
	}
	e, err := b.bootCLI(ctx, req)
	if err != nil {
		ch.close()
		return nil, err
	}
	if e.CID() != req.CID {
		ch.close()
		_ = e.Terminate(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("booting enclave: nitro-cli started enclave %s with CID %d, not the CID %d given to it; terminated it, because its init would connect to a port the launcher does not hold", e.ID(), e.CID(), req.CID)
	}
	go func() {
		<-e.Done()
		ch.close()
	}()
	return &channelEnclave{nitroEnclave: e, ch: ch}, nil
}

// channel is the launcher's end of one enclave's agent channel.
type channel struct {
	cid, port uint32
	l         net.Listener
	logf      func(format string, args ...any)
	closeOnce sync.Once
}

func (b *Backend) listenChannel(cid uint32) (*channel, error) {
	port, err := agent.ChannelPort(cid)
	if err != nil {
		return nil, err
	}
	l, err := b.cfg.ListenVsock(port)
	if err != nil {
		return nil, fmt.Errorf("listening on vsock port %d for the agent channel of enclave CID %d: %w; refusing to boot, since whoever holds the port would get the enclave's channel (if another process holds it, it may be a Pod trying to take over enclaves: keep AF_VSOCK away from Pods on enclave nodes, see docs/SECURITY.md)", port, cid, err)
	}
	return &channel{cid: cid, port: port, l: l, logf: b.cfg.Logf}, nil
}

func (c *channel) close() { c.closeOnce.Do(func() { c.l.Close() }) }

// peerCID is the vsock CID of a connection's peer.
func peerCID(a net.Addr) (uint32, bool) {
	va, ok := a.(*vsock.Addr)
	if !ok || va == nil {
		return 0, false
	}
	return va.ContextID, true
}

// accept returns the first connection from the enclave's CID, closing and
// logging every other one, until ctx ends or stopped closes. It closes the
// listener before it returns: init connects once.
func (c *channel) accept(ctx context.Context, stopped <-chan struct{}) (net.Conn, error) {
	defer c.close()
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		select {
		case <-quit:
		case <-ctx.Done():
		case <-stopped:
		}
		c.close()
	}()
	var refused []string
	for {
		conn, err := c.l.Accept()
		if err != nil {
			// The listener was closed because the enclave stopped or ctx
			// ended; say which.
			select {
			case <-stopped:
				err = errors.New("the enclave stopped")
			default:
				if ctx.Err() != nil {
					err = ctx.Err()
				}
			}
			var also string
			if len(refused) > 0 {
				also = fmt.Sprintf("; refused %d connection(s) from other peers (%s): something else on this host tried to take the channel", len(refused), strings.Join(refused[:min(len(refused), maxLoggedRejects)], ", "))
			}
			return nil, fmt.Errorf("waiting for the agent channel of enclave CID %d on vsock port %d: %w%s", c.cid, c.port, err, also)
		}
		if peer, ok := peerCID(conn.RemoteAddr()); ok && peer == c.cid {
			return conn, nil
		}
		refused = append(refused, conn.RemoteAddr().String())
		if len(refused) <= maxLoggedRejects {
			c.logf("nitropod: refused a connection from %v to the agent channel port %d of enclave CID %d: only the enclave may connect; another process on this host tried to take the channel (keep AF_VSOCK away from Pods on enclave nodes)",
				conn.RemoteAddr(), c.port, c.cid)
		}
		conn.Close()
	}
}

// channelEnclave is a nitro-cli enclave with its agent channel listener.
type channelEnclave struct {
	*nitroEnclave
	ch *channel
}

// Dial waits, for at most DialTimeout, for init's connection to the agent
// channel port and returns it.
func (e *channelEnclave) Dial(ctx context.Context) (net.Conn, error) {
	if !e.dialed.CompareAndSwap(false, true) {
		return nil, errors.New("the agent channel of this enclave was already dialled")
	}
	ctx, cancel := context.WithTimeout(ctx, e.b.cfg.DialTimeout)
	defer cancel()
	c, err := e.ch.accept(ctx, e.Done())
	if err != nil {
		return nil, fmt.Errorf("enclave %s: %w", e.ID(), err)
	}
	return c, nil
}
