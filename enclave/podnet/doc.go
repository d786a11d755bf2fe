// Package podnet makes an enclave a member of its Pod's network
// (docs/ARCHITECTURE.md §5a). An enclave has no network device of its own:
// its only link to the world is the agent channel (vsock on Nitro, a
// virtio-serial port in emulation). podnet carries IP packets over two
// stream kinds of that channel:
//
//   - KindPackets ("net"): the host sends a Config frame (the enclave's
//     address, the MTU), init creates the TUN device eth0 with that address
//     and a default route through it and answers Ready; after that each
//     frame is one IPv4 packet (2-byte length, then the bytes), both ways.
//   - KindPorts ("netports"): init reports, whenever the set changes, every
//     TCP port the app listens on at an address other than loopback (asked
//     of the kernel's sock_diag, or read from /proc/net/tcp and tcp6 when
//     the kernel lacks it), polled every 250 ms.
//
// On the host, Host terminates those packets in a userspace TCP/IP stack,
// gVisor's netstack, running in the launcher:
//
//   - Egress: a TCP SYN or the first UDP datagram of a flow from the
//     enclave, to any address, makes the launcher dial that address from the
//     Pod's network namespace (NS), so the connection leaves with the Pod IP
//     as source and Services, SNAT and NetworkPolicy apply as to a runc
//     container of the Pod. A refused or unreachable destination resets the
//     enclave's connect at once (ECONNREFUSED). LoopbackPeer (169.254.1.1)
//     stands for the Pod's 127.0.0.1, where sidecars listen.
//   - Ingress: for every port init reports (and every port the caller
//     publishes), the launcher listens in the Pod's namespace and connects
//     each client into the enclave through the stack with the client's own
//     address and port as source (clients on the Pod's loopback appear as
//     LoopbackPeer), so the app sees who connected.
//
// The enclave's kernel routes: a socket bound to its 127.0.0.1 is not
// reachable through eth0, and a port nobody listens on answers with a reset,
// so the host reaches exactly what the app exposes to the Pod network. An
// egress allowlist (contract.ParseEgressAllow), measured into the EIF, is
// enforced by init on the packets before they leave (EgressFilter).
//
// # Why gVisor's netstack
//
// Writing TCP/IP is out of the question; among maintained userspace stacks
// in Go, gVisor's netstack is the one used in production by gVisor itself
// and by the projects built on it (gvisor-tap-vsock among them). We use it
// directly rather than through gvisor-tap-vsock because that project's
// building blocks hide what this package needs: its port forwarding dials
// into the guest from the gateway's address (the app would see the gateway,
// not the client), its NAT offers no hook to refuse a connect with a reset
// or bound the number of connections and flows, and it brings a DHCP and
// DNS server and a virtual switch that an enclave with one fixed address
// does not need. With netstack directly, spoofing the client's address on
// ingress and refusing on egress are one option and one call each.
//
// # Limits
//
// Everything the enclave or a flood of clients can make the launcher hold
// is bounded (Limits): at most MaxTCP connections (default 4096; over it an
// egress connect is reset and a client closed), at most MaxUDP flows
// (default 1024; datagrams of further flows are dropped; a flow idle for
// UDPIdle, 60 s, is closed), Queue packets queued towards the enclave
// (1024; more are dropped and TCP retransmits), per connection the stack's
// send and receive buffers (at most 1 MiB each) and two 32 KiB copy
// buffers, and at most MaxListenPorts published ports; a connect in flight
// holds its connection's slot. Worst case the stack's buffers are
// MaxTCP × 2 MiB, so the launcher's cgroup (the Pod's launcherMemory) is
// what caps the total; measured: 20 MiB RSS with 100 open connections
// (BENCHMARKS.md).
package podnet
