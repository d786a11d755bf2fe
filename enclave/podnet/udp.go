package podnet

import (
	"context"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// egressUDP is called by the stack for the first datagram of a new flow
// (enclave address:port → destination); later datagrams of the flow reach
// the endpoint it creates. It must not block: the stack's packet path
// calls it.
func (h *Host) egressUDP(r *udp.ForwarderRequest) {
	select {
	case h.udpSlots <- struct{}{}:
	default:
		h.stats.UDPDropped.Add(1)
		return
	}
	id := r.ID()
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		<-h.udpSlots
		return
	}
	in := gonet.NewUDPConn(&wq, ep)
	dst := netip.AddrPortFrom(egressDest(fromTCPIP(id.LocalAddress)), id.LocalPort)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer func() { <-h.udpSlots }()
		defer in.Close()
		ctx, cancel := context.WithTimeout(h.ctx, h.cfg.Limits.DialTimeout)
		out, err := h.cfg.Net.DialContext(ctx, "udp", dst.String())
		cancel()
		if err != nil {
			return
		}
		defer out.Close()
		h.relayUDP(in, out)
	}()
}

// relayUDP copies datagrams both ways until the flow was idle for
// Limits.UDPIdle or the Host closes.
func (h *Host) relayUDP(in, out net.Conn) {
	idle := h.cfg.Limits.UDPIdle
	done := make(chan struct{})
	stop := context.AfterFunc(h.ctx, func() { in.Close(); out.Close() })
	defer stop()
	pump := func(dst, src net.Conn) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, MaxPacket)
		for {
			_ = src.SetReadDeadline(time.Now().Add(idle))
			n, err := src.Read(buf)
			if err != nil {
				// Idle or closed: end both directions.
				in.Close()
				out.Close()
				return
			}
			// Activity either way keeps the flow: push the other
			// side's deadline too.
			_ = dst.SetReadDeadline(time.Now().Add(idle))
			if _, err := dst.Write(buf[:n]); err != nil {
				continue // a refused datagram (ICMP) does not end the flow
			}
		}
	}
	go pump(out, in)
	go pump(in, out)
	<-done
	<-done
}
