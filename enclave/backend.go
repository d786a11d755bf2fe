package enclave

import (
	"context"
	"io"
	"net"
)

// Request describes one enclave to boot from an EIF file.
type Request struct {
	// Name identifies the enclave in logs and in the backend (e.g. the container ID).
	Name string
	// EIFPath is the Enclave Image File to boot.
	EIFPath string
	// CPUs is the number of vCPUs; CPUIDs, when set, are the host CPUs to use
	// (nitro-cli --cpu-ids) and then len(CPUIDs) == CPUs.
	CPUs   int
	CPUIDs []int
	// MemoryMiB is the enclave memory; it must be at least 4× the EIF size.
	MemoryMiB int
	// Debug boots a debug-mode enclave: the console is readable, PCRs read as zero.
	Debug bool
	// CID is the enclave's vsock CID; 0 lets the backend choose (≥ 16).
	CID uint32
	// Console receives the kernel console in debug mode; nil discards it.
	Console io.Writer
}

// Backend boots enclaves: QEMU in emulation, nitro-cli on Nitro hosts.
type Backend interface {
	// Boot validates the request and starts the enclave. It returns once the
	// enclave is running and its agent channel can be dialled; the enclave
	// keeps running after ctx ends (ctx bounds only the boot itself).
	Boot(ctx context.Context, req Request) (Enclave, error)
}

// Enclave is one running enclave, owned by whoever called Boot.
type Enclave interface {
	// ID is the backend's identifier (nitro-cli EnclaveID, or the QEMU PID).
	ID() string
	// CID is the enclave's vsock CID.
	CID() uint32
	// Dial opens the agent channel transport to the enclave's init (vsock on
	// Nitro, the virtio-serial port in emulation). It is called once.
	Dial(ctx context.Context) (net.Conn, error)
	// Done is closed when the enclave has stopped, for any reason.
	Done() <-chan struct{}
	// Terminate stops the enclave and releases everything it held; after it
	// returns no backend process is left. Calling it again is a no-op.
	Terminate(ctx context.Context) error
}

// NSMServer is implemented by enclaves whose backend emulates the Nitro
// Secure Module (QEMU): Start serves the enclave's NSM requests, which init
// forwards from /dev/nsm over the agent channel, with NSMHandler's function
// (nil: none). On Nitro the NSM is the hypervisor's and nothing is served.
type NSMServer interface {
	NSMHandler() func(req []byte) []byte
}
