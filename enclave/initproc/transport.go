package initproc

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nitropod/nitropod/enclave/agent"
)

// Where init looks for the agent channel's transport, relative to the root
// (/ in an enclave; a temporary directory in tests).
const (
	virtioPortsDir   = "sys/class/virtio-ports"
	virtioDevicesDir = "sys/bus/virtio/devices"
	vsockDevice      = "dev/vsock"
	// virtioIDConsole is the virtio device ID of a console (virtio-serial)
	// device, as /sys/bus/virtio/devices/*/device shows it.
	virtioIDConsole = 3
)

// How long init waits for a transport.
const (
	// portGrace is how long init waits for the named port when the enclave
	// has both a virtio console device and /dev/vsock (a combination no
	// nitropod backend makes) before it takes vsock.
	portGrace = time.Second
	// transportTimeout is how long init waits for either transport.
	transportTimeout = 10 * time.Second
)

// transport is the agent channel's transport: the virtio-serial port device
// (emulation) or vsock (Nitro).
type transport struct {
	port  string // the port's device path, when the port is the transport
	vsock bool
}

// pickTransport looks once at the system under root, waited after init
// started looking, and says which transport carries the agent channel; the
// zero transport means "not yet, look again".
//
// The named virtio-serial port wins whenever it is there. Otherwise vsock is
// taken at once when /dev/vsock exists and the enclave has no virtio console
// device at all: no port can appear then (a Nitro enclave's virtio devices
// are vsock and the NSM, even when its kernel has virtio_console built in
// and so has /sys/class/virtio-ports). The console device is on the virtio
// bus as soon as the virtio transport driver has probed it, before init
// runs or once init has loaded the blob set's modules, while its ports come
// up a little later; so only when a console device exists does init wait
// for the port, and for portGrace at most when /dev/vsock exists too.
func pickTransport(root string, waited time.Duration) (transport, error) {
	if dev := findPort(root, agent.PortName); dev != "" {
		return transport{port: dev}, nil
	}
	if _, err := os.Stat(filepath.Join(root, vsockDevice)); err == nil {
		if !hasVirtioConsole(root) || waited >= portGrace {
			return transport{vsock: true}, nil
		}
		return transport{}, nil
	}
	if waited >= transportTimeout {
		return transport{}, fmt.Errorf("neither the virtio-serial port %q (under /%s) nor /%s appeared within %v (the blob set's kernel needs virtio_console for emulation or vsock for Nitro)",
			agent.PortName, virtioPortsDir, vsockDevice, transportTimeout)
	}
	return transport{}, nil
}

// waitTransport calls pickTransport until it names a transport or fails,
// sleeping with sleep between looks.
func waitTransport(root string, now func() time.Time, sleep func(time.Duration)) (transport, error) {
	start := now()
	for {
		t, err := pickTransport(root, now().Sub(start))
		if err != nil || t.port != "" || t.vsock {
			return t, err
		}
		sleep(20 * time.Millisecond)
	}
}

// findPort returns the device of the virtio-serial port called name, or "".
func findPort(root, name string) string {
	ents, _ := os.ReadDir(filepath.Join(root, virtioPortsDir))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(root, virtioPortsDir, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			dev := filepath.Join(root, "dev", e.Name())
			if _, err := os.Stat(dev); err == nil {
				return dev
			}
		}
	}
	return ""
}

// hasVirtioConsole says whether a virtio console device is on the virtio bus.
func hasVirtioConsole(root string) bool {
	ents, _ := os.ReadDir(filepath.Join(root, virtioDevicesDir))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(root, virtioDevicesDir, e.Name(), "device"))
		if err != nil {
			continue
		}
		if id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 0, 32); err == nil && id == virtioIDConsole {
			return true
		}
	}
	return false
}

// vsockNet is what init needs of AF_VSOCK. Init never listens on vsock:
// that would let any process on the parent that can open a vsock socket
// reach into the enclave (see the agent package doc).
type vsockNet interface {
	// LocalCID is the enclave's own CID.
	LocalCID() (uint32, error)
	// Dial connects to port on cid.
	Dial(cid, port uint32) (io.ReadWriteCloser, error)
}

// dialVsockChannel sends the Nitro heartbeat and opens the agent channel on
// vsock: one connection to the parent at agent.ChannelPort(the enclave's
// CID), where the launcher listens since before the enclave booted. It dials
// once: the launcher held the port before the boot and accepts only this
// enclave's CID, so a refused connection means the launcher is gone, and a
// retry could only reach whoever bound the port after it.
func dialVsockChannel(n vsockNet) (io.ReadWriteCloser, error) {
	cid, err := n.LocalCID()
	if err != nil {
		return nil, fmt.Errorf("reading the enclave's vsock CID: %w", err)
	}
	port, err := agent.ChannelPort(cid)
	if err != nil {
		return nil, err
	}
	hb, err := n.Dial(agent.HeartbeatCID, agent.HeartbeatPort)
	if err != nil {
		return nil, fmt.Errorf("heartbeat to vsock %d:%d: %w", agent.HeartbeatCID, agent.HeartbeatPort, err)
	}
	err = heartbeat(hb)
	hb.Close()
	if err != nil {
		return nil, fmt.Errorf("heartbeat to vsock %d:%d: %w", agent.HeartbeatCID, agent.HeartbeatPort, err)
	}
	c, err := n.Dial(agent.ParentCID, port)
	if err != nil {
		return nil, fmt.Errorf("connecting to the launcher at vsock %d:%d (enclave CID %d): %w (the launcher listens there from before the boot; it is gone or refused this enclave)",
			agent.ParentCID, port, cid, err)
	}
	return c, nil
}

// heartbeat sends the heartbeat byte and checks its echo.
func heartbeat(rw io.ReadWriter) error {
	if _, err := rw.Write([]byte{agent.HeartbeatByte}); err != nil {
		return err
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(rw, b); err != nil {
		return err
	}
	if b[0] != agent.HeartbeatByte {
		return fmt.Errorf("echo is %#x, want %#x", b[0], agent.HeartbeatByte)
	}
	return nil
}
