package nsm

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DevicePath is the NSM device inside an enclave.
const DevicePath = "/dev/nsm"

// Client talks to an NSM device (the real one on Nitro, the emulated one
// in emulation) with the driver's ioctl, as AWS's library does.
//
// The device is a plain file descriptor, never registered with Go's
// netpoller: in emulation /dev/nsm is served by nitropod-init itself
// (CUSE), and an epoll_ctl on it from init would wait for init's own CUSE
// loop, which waits on the same epoll instance.
type Client struct {
	mu sync.Mutex
	fd int
}

// Open opens the NSM device at path (DevicePath).
func Open(path string) (*Client, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the NSM device %s: %w", path, err)
	}
	return &Client{fd: fd}, nil
}

// Close closes the device.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// Call sends one CBOR request and returns the CBOR response.
func (c *Client) Call(req []byte) ([]byte, error) {
	if len(req) == 0 {
		return nil, errors.New("empty NSM request")
	}
	resp := make([]byte, MaxResponse)
	raw := [4]uint64{
		uint64(uintptr(unsafe.Pointer(&req[0]))), uint64(len(req)),
		uint64(uintptr(unsafe.Pointer(&resp[0]))), uint64(len(resp)),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil, errors.New("NSM device is closed")
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), IoctlCmd, uintptr(unsafe.Pointer(&raw)))
	runtime.KeepAlive(req)
	runtime.KeepAlive(resp)
	if errno != 0 {
		return nil, fmt.Errorf("NSM ioctl: %w", errno)
	}
	if raw[3] > uint64(len(resp)) {
		return nil, fmt.Errorf("NSM returned %d bytes into a %d-byte buffer", raw[3], len(resp))
	}
	return resp[:raw[3]], nil
}

// Do encodes r, calls the device and decodes its response.
func (c *Client) Do(r Request) (Response, error) {
	b, err := EncodeRequest(r)
	if err != nil {
		return Response{}, err
	}
	out, err := c.Call(b)
	if err != nil {
		return Response{}, err
	}
	return DecodeResponse(out)
}
