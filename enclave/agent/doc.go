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
//
// Messages and headers are framed as a 4-byte big-endian length followed by
// JSON. Nothing that arrives over the channel changes which code runs: the
// process is measured in the EIF, the channel only starts it, signals it and
// carries its I/O.
//
// Before yamux starts, init sends the Nitro heartbeat byte (0xB7) and waits
// for its echo: on Nitro to CID 3 port 9000 (nitro-cli answers), in emulation
// as the first byte on the virtio-serial port (the QEMU backend answers), so
// the host learns that the enclave booted at the same point in both.
package agent
