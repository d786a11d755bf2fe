// Package agent is the channel between the host and nitropod-init inside an
// enclave (docs/ARCHITECTURE.md §5): one byte stream (AF_VSOCK on Nitro, a
// virtio-serial port in emulation) multiplexed with yamux into streams.
//
// The host is the yamux client and opens every stream; init is the server.
// Each stream starts with a Header naming its kind:
//
//   - control: versioned Messages both ways. The host sends hello, start,
//     signal and bye; init answers hello, then started (the app runs), exit
//     (its status) or error (a failure before the app started, with its stage).
//   - stdin, stdout, stderr: the app's standard streams as raw bytes; EOF
//     closes them.
//   - forward: one forwarded TCP connection; init dials 127.0.0.1:Port inside
//     the enclave and copies both ways, honouring half-closes.
//   - nsm: in emulation, the emulated Nitro Secure Module: init sends each
//     request an app made on /dev/nsm, the host answers (see KindNSM and
//     docs/ATTESTATION.md).
//   - exec: one process init runs next to the app on the host's request
//     (kubectl exec, exec probes and hooks), with its stdio, terminal size,
//     signals and exit status on that one stream; init runs only what the
//     measured process description allows (see KindExec).
//
// Messages and headers are framed as a 4-byte big-endian length followed by
// JSON. Nothing that arrives over the channel changes which code runs: the
// process is measured in the EIF, the channel only starts it, signals it and
// carries its I/O. Exec streams run only commands the measured process
// description lists, or any command when it says so (debug enclaves, whose
// measurement thus differs from a production one).
//
// Before yamux starts, init sends the Nitro heartbeat byte (0xB7) and waits
// for its echo: on Nitro to CID 3 port 9000 (nitro-cli answers), in emulation
// as the first byte on the virtio-serial port (the QEMU backend answers), so
// the host learns that the enclave booted at the same point in both.
//
// # Who gets the channel on Nitro
//
// vsock is not network-namespaced: every process on the parent instance that
// may create an AF_VSOCK socket, in any Pod, can dial any enclave's CID and
// bind any free port, and all of them show the parent's CID (3) to an
// enclave, so init cannot tell the launcher from another Pod by its address,
// and nothing secret can be given to init per boot (everything in the EIF is
// measured and the same for every boot). Were init to listen and take the
// first connection, another Pod could race the launcher for a booting
// enclave and drive its app: start it, read its output, feed its input.
//
// So the direction is reversed, and the launcher's proof is the port it
// holds plus the peer CID the hypervisor stamps:
//
//   - Before booting, the launcher picks the enclave's CID (nitro-cli
//     --enclave-cid) and binds vsock port ChannelPort(CID) on VMADDR_CID_ANY,
//     which makes that port its own on every CID of the host: no other socket
//     can bind it afterwards. If the bind fails (someone holds the port) it
//     does not boot, and says so: failing closed, and visibly.
//   - Init reads its own CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID), sends the
//     heartbeat, and dials ParentCID at ChannelPort(its CID), once. Init never
//     listens on vsock, so nothing on the host can reach into the enclave.
//   - The launcher accepts on that port only a connection whose peer is the
//     enclave's CID. The source CID of a packet from an enclave is set by the
//     hypervisor, and a process on the host always has the host's CID (or
//     the loopback CID 1), so no Pod can pass for the enclave; every other
//     connection is closed and logged. Other enclaves have other CIDs: the
//     hypervisor gives a CID to one running enclave at a time, and nitro-cli
//     refuses a CID in use.
//   - The launcher stops listening once the enclave connected. Init does not
//     dial again, so whoever binds the port later reaches nothing.
//
// This keeps other Pods from the channel; it is not a trust boundary for the
// enclave, which does not trust the node at all: nothing that arrives over
// the channel changes the measured code that runs. Keeping Pods on enclave
// nodes from opening AF_VSOCK sockets at all (docs/SECURITY.md) also keeps
// them from squatting channel ports, which would make boots fail.
//
// In emulation the channel is a virtio-serial port whose host end is a unix
// socket in the launcher's private directory, so only the launcher reaches it.
package agent
