package podnet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tcpListenState is TCP_LISTEN in the kernel's state numbering.
const tcpListenState = 10

// inetDiagReq is struct inet_diag_req_v2.
type inetDiagReq struct {
	Family   uint8
	Protocol uint8
	Ext      uint8
	Pad      uint8
	States   uint32
	ID       [48]byte // struct inet_diag_sockid: only the states filter is used
}

// ListeningTCP asks the kernel (sock_diag over netlink, in the calling
// thread's network namespace) for the TCP sockets in LISTEN state and
// returns their ports, loopback-bound ones left out, sorted and unique. The
// kernel filters by state, so the cost does not grow with the app's
// established connections (reading /proc/net/tcp does).
func ListeningTCP() ([]uint16, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening sock_diag: %w", err)
	}
	defer unix.Close(fd)
	var ports []uint16
	for i, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		req := inetDiagReq{Family: family, Protocol: unix.IPPROTO_TCP, States: 1 << tcpListenState}
		hdr := unix.NlMsghdr{
			Len:   uint32(unix.SizeofNlMsghdr + unsafe.Sizeof(req)),
			Type:  unix.SOCK_DIAG_BY_FAMILY,
			Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP,
			Seq:   uint32(i + 1),
		}
		msg := append(unsafe.Slice((*byte)(unsafe.Pointer(&hdr)), unix.SizeofNlMsghdr), unsafe.Slice((*byte)(unsafe.Pointer(&req)), unsafe.Sizeof(req))...)
		if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return nil, fmt.Errorf("asking sock_diag: %w", err)
		}
		buf := make([]byte, 32<<10)
	read:
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return nil, fmt.Errorf("reading sock_diag: %w", err)
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				return nil, fmt.Errorf("parsing sock_diag: %w", err)
			}
			for _, m := range msgs {
				switch m.Header.Type {
				case unix.NLMSG_DONE:
					break read
				case unix.NLMSG_ERROR:
					if len(m.Data) >= 4 {
						if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
							return nil, fmt.Errorf("sock_diag: %w", unix.Errno(-code))
						}
					}
					break read
				}
				if p, ok := listenPort(m.Data); ok {
					ports = append(ports, p)
				}
			}
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports), nil
}

// listenPort reads one struct inet_diag_msg: family (byte 0), the socket
// id's source port (bytes 4-5, big-endian) and source address (bytes 8-23).
func listenPort(d []byte) (uint16, bool) {
	if len(d) < 24 {
		return 0, false
	}
	port := binary.BigEndian.Uint16(d[4:6])
	var addr netip.Addr
	switch d[0] {
	case unix.AF_INET:
		addr = netip.AddrFrom4([4]byte(d[8:12]))
	case unix.AF_INET6:
		addr = netip.AddrFrom16([16]byte(d[8:24])).Unmap()
	default:
		return 0, false
	}
	if port == 0 || addr.IsLoopback() {
		return 0, false
	}
	return port, true
}
