package nsm

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DevicePath is the NSM device inside an enclave.
const DevicePath = "/dev/nsm"

// Client talks to an NSM device (the real one on Nitro, the emulated one
// in emulation) with the driver's ioctl, as AWS's library does.
type Client struct {
	f *os.File
}

// Open opens the NSM device at path (DevicePath).
func Open(path string) (*Client, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the NSM device: %w", err)
	}
	return &Client{f: f}, nil
}

// Close closes the device.
func (c *Client) Close() error { return c.f.Close() }

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
	sc, err := c.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var errno unix.Errno
	cerr := sc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, IoctlCmd, uintptr(unsafe.Pointer(&raw)))
	})
	runtime.KeepAlive(req)
	runtime.KeepAlive(resp)
	if cerr != nil {
		return nil, cerr
	}
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
