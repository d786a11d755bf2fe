package initproc

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/nitropod/nitropod/enclave/nsm"
)

// The emulated /dev/nsm is a CUSE device (enclave/nsm's package doc says
// why). This file is the FUSE/CUSE wire protocol, kept free of system calls
// so that it is unit-tested; nsm_linux.go runs it on /dev/cuse.

// FUSE/CUSE protocol constants (include/uapi/linux/fuse.h).
const (
	fuseKernelVersion = 7
	fuseMinMinor      = 16 // 64-bit ioctl iovecs

	opOpen      = 14
	opRelease   = 18
	opFlush     = 25
	opInterrupt = 36
	opIoctl     = 39
	opCuseInit  = 4096

	cuseUnrestrictedIoctl = 1 << 0

	ioctlCompat       = 1 << 0
	ioctlUnrestricted = 1 << 1
	ioctlRetry        = 1 << 2

	inHeaderSize  = 40
	outHeaderSize = 16
	ioctlInSize   = 32
	ioctlOutSize  = 16
	cuseInitOut   = 72

	// cuseDevName is the device cuse creates: /dev/nsm.
	cuseDevName = "nsm"
)

var le = binary.LittleEndian

// fuseIn is one request read from /dev/cuse.
type fuseIn struct {
	opcode uint32
	unique uint64
	body   []byte
}

func parseFuseIn(b []byte) (fuseIn, error) {
	if len(b) < inHeaderSize {
		return fuseIn{}, fmt.Errorf("cuse request of %d bytes is shorter than its header", len(b))
	}
	n := le.Uint32(b[0:])
	if int(n) != len(b) {
		return fuseIn{}, fmt.Errorf("cuse request says %d bytes, read %d", n, len(b))
	}
	return fuseIn{opcode: le.Uint32(b[4:]), unique: le.Uint64(b[8:]), body: b[inHeaderSize:]}, nil
}

// reply encodes a reply with payload, or an error (errno > 0) without one.
func reply(unique uint64, errno syscall.Errno, payload ...[]byte) []byte {
	n := outHeaderSize
	if errno == 0 {
		for _, p := range payload {
			n += len(p)
		}
	}
	b := make([]byte, outHeaderSize, n)
	le.PutUint32(b[0:], uint32(n))
	le.PutUint32(b[4:], uint32(-int32(errno)))
	le.PutUint64(b[8:], unique)
	if errno == 0 {
		for _, p := range payload {
			b = append(b, p...)
		}
	}
	return b
}

// cuseInitReply answers CUSE_INIT: the kernel's protocol version (at least
// 7.16), unrestricted ioctls (the NSM ioctl's argument points to iovecs)
// and DEVNAME=nsm.
func cuseInitReply(in fuseIn) ([]byte, error) {
	if len(in.body) < 8 {
		return nil, fmt.Errorf("CUSE_INIT of %d bytes", len(in.body))
	}
	major, minor := le.Uint32(in.body[0:]), le.Uint32(in.body[4:])
	if major != fuseKernelVersion || minor < fuseMinMinor {
		return nil, fmt.Errorf("kernel speaks FUSE %d.%d, need %d.%d or later", major, minor, fuseKernelVersion, fuseMinMinor)
	}
	out := make([]byte, cuseInitOut)
	le.PutUint32(out[0:], major)
	le.PutUint32(out[4:], minor)
	le.PutUint32(out[12:], cuseUnrestrictedIoctl)
	le.PutUint32(out[16:], 4096) // max_read
	le.PutUint32(out[20:], 4096) // max_write
	// dev_major, dev_minor 0: the kernel picks a number.
	return reply(in.unique, 0, out, []byte("DEVNAME="+cuseDevName+"\x00")), nil
}

// openReply answers FUSE_OPEN with file handle 0.
func openReply(in fuseIn) []byte { return reply(in.unique, 0, make([]byte, 16)) }

// ioctlIn is a FUSE_IOCTL request.
type ioctlIn struct {
	flags           uint32
	cmd             uint32
	arg             uint64
	inSize, outSize uint32
	data            []byte // in_size bytes: the in iovecs' contents
}

func parseIoctlIn(body []byte) (ioctlIn, error) {
	if len(body) < ioctlInSize {
		return ioctlIn{}, fmt.Errorf("FUSE_IOCTL of %d bytes", len(body))
	}
	r := ioctlIn{
		flags: le.Uint32(body[8:]), cmd: le.Uint32(body[12:]), arg: le.Uint64(body[16:]),
		inSize: le.Uint32(body[24:]), outSize: le.Uint32(body[28:]), data: body[ioctlInSize:],
	}
	if int(r.inSize) != len(r.data) {
		return ioctlIn{}, fmt.Errorf("FUSE_IOCTL says %d input bytes, carries %d", r.inSize, len(r.data))
	}
	return r, nil
}

// iovec is one user memory range of an ioctl.
type iovec struct{ base, size uint64 }

// nsmRaw is the ioctl's argument: struct nsm_raw { struct iovec request;
// struct iovec response; } of the calling process.
type nsmRaw struct{ req, resp iovec }

func parseRaw(b []byte) nsmRaw {
	return nsmRaw{
		req:  iovec{le.Uint64(b[0:]), le.Uint64(b[8:])},
		resp: iovec{le.Uint64(b[16:]), le.Uint64(b[24:])},
	}
}

// ioctlStep is what to do with one FUSE_IOCTL: answer it (reply), or run
// the NSM request (request) and then call finish with its response.
type ioctlStep struct {
	reply   []byte
	request []byte
	finish  func(resp []byte) []byte
}

// retryReply asks the kernel to send the ioctl again with the given user
// memory copied in (in) and room for output to the given ranges (out).
func retryReply(unique uint64, in, out []iovec) []byte {
	hdr := make([]byte, ioctlOutSize)
	le.PutUint32(hdr[4:], ioctlRetry)
	le.PutUint32(hdr[8:], uint32(len(in)))
	le.PutUint32(hdr[12:], uint32(len(out)))
	iovs := make([]byte, 0, 16*(len(in)+len(out)))
	for _, v := range append(append([]iovec(nil), in...), out...) {
		iovs = le.AppendUint64(iovs, v.base)
		iovs = le.AppendUint64(iovs, v.size)
	}
	return reply(unique, 0, hdr, iovs)
}

// nsmIoctl runs the unrestricted-ioctl retry protocol for the NSM ioctl
// (fs/fuse/file.c fuse_do_ioctl): the kernel first sends no data; init asks
// for the 32-byte nsm_raw at arg; then for nsm_raw plus the request bytes,
// with nsm_raw and the response buffer (capped at nsm.MaxResponse) as
// output; then it answers with nsm_raw (its response length updated) and
// the response. Every step re-reads nsm_raw from the data the kernel sent,
// so a caller that changes it between steps just gets another retry.
func nsmIoctl(in fuseIn) ioctlStep {
	io, err := parseIoctlIn(in.body)
	if err != nil {
		return ioctlStep{reply: reply(in.unique, syscall.EINVAL)}
	}
	if io.cmd != nsm.IoctlCmd {
		return ioctlStep{reply: reply(in.unique, syscall.ENOTTY)}
	}
	if io.flags&ioctlCompat != 0 || io.flags&ioctlUnrestricted == 0 {
		// 32-bit callers are not supported (nor is the NSM on Nitro).
		return ioctlStep{reply: reply(in.unique, syscall.ENOTTY)}
	}
	self := iovec{io.arg, nsm.RawSize}
	if len(io.data) < nsm.RawSize {
		return ioctlStep{reply: retryReply(in.unique, []iovec{self}, nil)}
	}
	raw := parseRaw(io.data)
	if raw.req.size > nsm.MaxRequest {
		return ioctlStep{reply: reply(in.unique, syscall.EMSGSIZE)}
	}
	out := raw.resp
	out.size = min(out.size, nsm.MaxResponse)
	if uint64(io.inSize) != nsm.RawSize+raw.req.size || uint64(io.outSize) != nsm.RawSize+out.size {
		return ioctlStep{reply: retryReply(in.unique, []iovec{self, raw.req}, []iovec{self, out})}
	}
	req := io.data[nsm.RawSize:]
	return ioctlStep{request: req, finish: func(resp []byte) []byte {
		if uint64(len(resp)) > out.size {
			resp = nsm.ErrorResponse(nsm.BufferTooSmall)
			if uint64(len(resp)) > out.size {
				return reply(in.unique, syscall.ENOMEM)
			}
		}
		back := make([]byte, nsm.RawSize)
		copy(back, io.data[:nsm.RawSize])
		le.PutUint64(back[24:], uint64(len(resp)))
		hdr := make([]byte, ioctlOutSize) // result 0, no retry
		return reply(in.unique, 0, hdr, back, resp)
	}}
}
