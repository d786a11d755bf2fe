package podnet

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// PublishUDP serves pc (bound by the caller in the Pod's namespace) as the
// enclave's UDP port: each client address becomes a flow into the enclave
// with that address as source, the app's answers go back to the client. A
// flow counts against MaxUDP and ends after UDPIdle without datagrams.
func (h *Host) PublishUDP(pc net.PacketConn, port uint16) {
	h.mu.Lock()
	h.publishedUDP = append(h.publishedUDP, pc)
	h.mu.Unlock()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.serveUDP(pc, port)
	}()
}

func (h *Host) serveUDP(pc net.PacketConn, port uint16) {
	var mu sync.Mutex
	flows := map[netip.AddrPort]*gonet.UDPConn{}
	defer func() {
		mu.Lock()
		for _, c := range flows {
			c.Close()
		}
		mu.Unlock()
	}()
	buf := make([]byte, MaxPacket)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		client, err := netip.ParseAddrPort(from.String())
		if err != nil {
			continue
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		mu.Lock()
		c := flows[client]
		mu.Unlock()
		if c == nil {
			select {
			case h.udpSlots <- struct{}{}:
			default:
				h.stats.UDPDropped.Add(1)
				continue
			}
			ip := client.Addr()
			if ip.IsLoopback() || !ip.Is4() || ip == h.cfg.Addr {
				ip = LoopbackPeer
			}
			c, err = gonet.DialUDP(h.stack,
				&tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(ip.As4()), Port: client.Port()},
				&tcpip.FullAddress{NIC: nicID, Addr: h.addr, Port: port}, ipv4.ProtocolNumber)
			if err != nil {
				<-h.udpSlots
				h.cfg.Logf("UDP flow from %s into enclave port %d: %v", client, port, err)
				continue
			}
			mu.Lock()
			flows[client] = c
			mu.Unlock()
			h.wg.Add(1)
			go func() { // the app's answers, until the flow is idle
				defer h.wg.Done()
				defer func() { <-h.udpSlots }()
				stop := context.AfterFunc(h.ctx, func() { c.Close() })
				defer stop()
				rb := make([]byte, MaxPacket)
				for {
					_ = c.SetReadDeadline(time.Now().Add(h.cfg.Limits.UDPIdle))
					n, err := c.Read(rb)
					if err != nil {
						break
					}
					_, _ = pc.WriteTo(rb[:n], from)
				}
				mu.Lock()
				delete(flows, client)
				mu.Unlock()
				c.Close()
			}()
		}
		_, _ = c.Write(buf[:n])
	}
}
