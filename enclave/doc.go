// Package enclave runs Enclave Image Files: the Backend interface with its
// implementations (QEMU emulation, nitro-cli on Nitro hosts), and the agent
// channel between the host and nitropod-init inside the enclave, which carries
// control messages, stdio, signals, the exit status and forwarded TCP ports.
package enclave
