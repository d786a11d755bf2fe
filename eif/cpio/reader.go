package cpio

import (
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ErrFormat is wrapped by every error about a malformed archive.
var ErrFormat = errors.New("invalid cpio newc archive")

// Reader reads a newc archive entry by entry, like archive/tar's Reader.
type Reader struct {
	r         io.Reader
	off       int64
	remaining int64
	pad       int64
	done      bool
}

// NewReader reads an archive from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

func (r *Reader) formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: at offset %d: %s", ErrFormat, r.off, fmt.Sprintf(format, args...))
}

func (r *Reader) skip(n int64) error {
	m, err := io.CopyN(io.Discard, r.r, n)
	r.off += m
	if errors.Is(err, io.EOF) {
		return r.formatErr("archive ends inside an entry")
	}
	return err
}

// Next advances to the next entry and returns its header; it returns io.EOF
// after the trailer. Symlink targets are read into Header.Linkname (bounded
// by MaxNameSize); other data is read with Read.
func (r *Reader) Next() (*Header, error) {
	if r.done {
		return nil, io.EOF
	}
	if err := r.skip(r.remaining + r.pad); err != nil {
		return nil, err
	}
	r.remaining, r.pad = 0, 0
	var b [headerSize]byte
	n, err := io.ReadFull(r.r, b[:])
	if errors.Is(err, io.EOF) {
		return nil, r.formatErr("archive ends without a %s entry", Trailer)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, r.formatErr("archive ends inside a header")
	}
	if err != nil {
		return nil, err
	}
	start := r.off
	r.off += int64(n)
	if string(b[:6]) != magic {
		return nil, fmt.Errorf("%w: at offset %d: magic %q, want %q (only the newc format is supported)", ErrFormat, start, b[:6], magic)
	}
	var f [13]uint32
	names := []string{"ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check"}
	for i := range f {
		field := b[6+8*i : 14+8*i]
		v, err := strconv.ParseUint(string(field), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: at offset %d: field %s is %q, not 8 hex digits", ErrFormat, start+6+8*int64(i), names[i], field)
		}
		f[i] = uint32(v)
	}
	namesize := int64(f[11])
	if namesize < 1 || namesize > MaxNameSize {
		return nil, fmt.Errorf("%w: at offset %d: name size %d outside 1..%d", ErrFormat, start+94, namesize, MaxNameSize)
	}
	name := make([]byte, namesize+pad4(headerSize+namesize))
	if _, err := io.ReadFull(r.r, name); err != nil {
		return nil, r.formatErr("archive ends inside a name")
	}
	r.off += int64(len(name))
	if name[namesize-1] != 0 {
		return nil, fmt.Errorf("%w: at offset %d: name is not NUL-terminated", ErrFormat, start+headerSize)
	}
	if namesize == 1 {
		return nil, fmt.Errorf("%w: at offset %d: empty name", ErrFormat, start+headerSize)
	}
	h := &Header{
		Name: string(name[:namesize-1]), Ino: f[0], Mode: f[1], UID: f[2], GID: f[3], Nlink: f[4],
		Mtime: int64(f[5]), Size: int64(f[6]), DevMajor: f[7], DevMinor: f[8], RDevMajor: f[9], RDevMinor: f[10],
	}
	r.remaining = h.Size
	r.pad = pad4(h.Size)
	if h.Name == Trailer {
		r.done = true
		if err := r.skip(r.remaining + r.pad); err != nil {
			return nil, err
		}
		return nil, io.EOF
	}
	if h.Mode&ModeType == TypeSymlink {
		if h.Size > MaxNameSize {
			return nil, fmt.Errorf("%w: at offset %d: symlink %q target is %d bytes, more than %d", ErrFormat, start, h.Name, h.Size, MaxNameSize)
		}
		t := make([]byte, h.Size)
		if _, err := io.ReadFull(r, t); err != nil {
			return nil, r.formatErr("archive ends inside a symlink target")
		}
		h.Linkname = string(t)
	}
	return h, nil
}

// Read reads the current entry's data.
func (r *Reader) Read(p []byte) (int, error) {
	if r.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.r.Read(p)
	r.off += int64(n)
	r.remaining -= int64(n)
	if errors.Is(err, io.EOF) {
		if r.remaining > 0 {
			return n, r.formatErr("archive ends inside the data of an entry")
		}
		err = nil
	}
	return n, err
}
