package podnet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/enclave/agent"
)

// IfName is the enclave's network interface.
const IfName = "eth0"

// GuestConfig configures init's side.
type GuestConfig struct {
	// Filter, when set, sees every packet: Outbound is asked about each
	// packet the app sends before it leaves the enclave (the egress
	// allowlist; a refused packet is dropped and, for a TCP connect,
	// answered with a reset), Inbound is shown each packet for the app.
	Filter Filter
	// Listening returns the app's listening TCP ports (not bound to
	// loopback); nil is ListeningTCP, falling back to /proc/net/tcp{,6}.
	Listening func() ([]uint16, error)
	// PollInterval of the listening ports; 0 is 250 ms.
	PollInterval time.Duration
}

// ServePackets is init's handler of the packet stream: it reads the
// Config, brings up IfName as a TUN device with the address and a default
// route, answers Ready and then copies packets between the device and s
// until either ends.
func ServePackets(s net.Conn, cfg GuestConfig) {
	defer s.Close()
	var c Config
	if err := agent.ReadFrame(s, &c); err != nil {
		return
	}
	tun, err := setupTUN(c)
	if err != nil {
		_ = agent.WriteFrame(s, Ready{Error: err.Error()})
		return
	}
	defer tun.Close()
	if err := agent.WriteFrame(s, Ready{}); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { // device → host
		defer func() { done <- struct{}{} }()
		rc, err := tun.SyscallConn()
		if err != nil {
			return
		}
		pkt := make([]byte, MaxPacket)
		var batch []byte
		for {
			// Every packet the device has ready goes out in one write
			// (fewer channel frames and syscalls), up to batchBytes.
			batch = batch[:0]
			var rerr error
			err := rc.Read(func(fd uintptr) bool {
				for len(batch) < batchBytes {
					n, err := unix.Read(int(fd), pkt)
					switch {
					case err == unix.EINTR:
						continue
					case err == unix.EAGAIN:
						return len(batch) > 0 // nothing yet: wait for the device
					case err != nil:
						rerr = err
						return true
					case n == 0:
						rerr = io.EOF
						return true
					}
					if cfg.Filter != nil && !cfg.Filter.Outbound(pkt[:n]) {
						if rst := resetFor(pkt[:n]); rst != nil {
							_, _ = unix.Write(int(fd), rst)
						}
						continue
					}
					batch = appendPacket(batch, [][]byte{pkt[:n]})
				}
				return true
			})
			if err != nil || rerr != nil {
				return
			}
			if len(batch) > 0 {
				if _, err := s.Write(batch); err != nil {
					return
				}
			}
		}
	}()
	go func() { // host → device
		defer func() { done <- struct{}{} }()
		br := bufio.NewReaderSize(s, 256<<10)
		buf := make([]byte, MaxPacket)
		for {
			p, err := ReadPacket(br, buf)
			if err != nil {
				return
			}
			if cfg.Filter != nil {
				cfg.Filter.Inbound(p)
			}
			_, _ = tun.Write(p) // a refused packet is dropped, as on a wire
		}
	}()
	<-done
}

// ServePorts is init's handler of the ports stream: it reports the
// app's listening TCP ports (not bound to loopback) whenever they change.
func ServePorts(s net.Conn, cfg GuestConfig) {
	defer s.Close()
	listening := cfg.Listening
	if listening == nil {
		listening = defaultListening
	}
	every := cfg.PollInterval
	if every == 0 {
		every = 250 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // the host closing the stream ends the loop
		var b [1]byte
		_, _ = s.Read(b[:])
		cancel()
	}()
	var last []uint16
	first := true
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ports, err := listening()
		if err != nil {
			ports = last // keep what was published; try again next time
		}
		if first || !slices.Equal(ports, last) {
			if err := agent.WriteFrame(s, Ports{TCP: ports}); err != nil {
				return
			}
			last, first = ports, false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// defaultListening asks sock_diag, or reads /proc/net when the kernel has
// no sock_diag for TCP.
func defaultListening() ([]uint16, error) {
	if ports, err := ListeningTCP(); err == nil {
		return ports, nil
	}
	var ports []uint16
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if b, err := os.ReadFile(f); err == nil {
			ports = append(ports, ListeningPorts(bytes.NewReader(b))...)
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports), nil
}

// setupTUN creates IfName, gives it c.Addr/32 and c.MTU, sets it up and
// routes everything not local through it.
func setupTUN(c Config) (*os.File, error) {
	addr, err := netip.ParseAddr(c.Addr)
	if err != nil || !addr.Is4() {
		return nil, fmt.Errorf("enclave address %q is not an IPv4 address", c.Addr)
	}
	if c.MTU < 576 || c.MTU > MaxPacket {
		return nil, fmt.Errorf("MTU %d outside 576..%d", c.MTU, MaxPacket)
	}
	// Non-blocking: Go's poller waits for it, and a read loop can take
	// every packet ready at once.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w (the enclave kernel needs CONFIG_TUN, or tun.ko in the blob set)", err)
	}
	ifr, err := unix.NewIfreq(IfName)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("creating %s: %w", IfName, err)
	}
	// Only now to Go's poller: before TUNSETIFF the device polls as an
	// error without a wait queue, and the poller would never hear of it.
	tun := os.NewFile(uintptr(fd), "/dev/net/tun")
	if err := configureLink(addr, c.MTU); err != nil {
		tun.Close()
		return nil, err
	}
	return tun, nil
}

func configureLink(addr netip.Addr, mtu int) error {
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(sock)
	set := func(what string, req uint, f func(*unix.Ifreq) error) error {
		ifr, err := unix.NewIfreq(IfName)
		if err != nil {
			return err
		}
		if f != nil {
			if err := f(ifr); err != nil {
				return err
			}
		}
		if err := unix.IoctlIfreq(sock, req, ifr); err != nil {
			return fmt.Errorf("%s of %s: %w", what, IfName, err)
		}
		return nil
	}
	if err := set("setting the address", unix.SIOCSIFADDR, func(r *unix.Ifreq) error { return r.SetInet4Addr(addr.AsSlice()) }); err != nil {
		return err
	}
	if err := set("setting the netmask", unix.SIOCSIFNETMASK, func(r *unix.Ifreq) error { return r.SetInet4Addr([]byte{255, 255, 255, 255}) }); err != nil {
		return err
	}
	if err := set("setting the MTU", unix.SIOCSIFMTU, func(r *unix.Ifreq) error { r.SetUint32(uint32(mtu)); return nil }); err != nil {
		return err
	}
	ifr, err := unix.NewIfreq(IfName)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("reading the flags of %s: %w", IfName, err)
	}
	flags := ifr.Uint16() | unix.IFF_UP | unix.IFF_RUNNING
	if err := set("setting up", unix.SIOCSIFFLAGS, func(r *unix.Ifreq) error { r.SetUint16(flags); return nil }); err != nil {
		return err
	}
	ifi, err := net.InterfaceByName(IfName)
	if err != nil {
		return err
	}
	return addDefaultRoute(ifi.Index)
}

// addDefaultRoute adds "default dev <ifindex>" to the main table over
// rtnetlink (a TUN device is point-to-point: no gateway).
func addDefaultRoute(ifindex int) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("opening rtnetlink: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("binding rtnetlink: %w", err)
	}
	rtm := unix.RtMsg{Family: unix.AF_INET, Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_BOOT, Scope: unix.RT_SCOPE_LINK, Type: unix.RTN_UNICAST}
	attr := make([]byte, unix.SizeofRtAttr+4)
	binary.NativeEndian.PutUint16(attr[0:], uint16(len(attr)))
	binary.NativeEndian.PutUint16(attr[2:], unix.RTA_OIF)
	binary.NativeEndian.PutUint32(attr[4:], uint32(ifindex))
	body := append(unsafe.Slice((*byte)(unsafe.Pointer(&rtm)), unix.SizeofRtMsg), attr...)
	hdr := unix.NlMsghdr{
		Len:   uint32(unix.SizeofNlMsghdr + len(body)),
		Type:  unix.RTM_NEWROUTE,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_REPLACE | unix.NLM_F_ACK,
		Seq:   1,
	}
	msg := append(unsafe.Slice((*byte)(unsafe.Pointer(&hdr)), unix.SizeofNlMsghdr), body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("adding the default route: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("adding the default route: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return fmt.Errorf("adding the default route: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return fmt.Errorf("adding the default route via %s: %w", IfName, unix.Errno(-code))
			}
		}
	}
	return nil
}
