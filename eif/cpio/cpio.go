// Package cpio reads and writes cpio archives in the "newc" format (magic
// 070701), the format of Linux initramfs images and of EIF ramdisks
// (docs/EIF-FORMAT.md "Ramdisks"). The writer is deterministic: it writes exactly
// the header fields it is given, numbers inodes itself unless told otherwise,
// sets no device numbers, and pads the archive to 512 bytes like AWS's
// images. The reader checks every field and bounds every size, so it can
// parse untrusted archives.
package cpio

import (
	"errors"
	"fmt"
	"io"
	"math"
)

// Mode bits of Header.Mode (the Unix st_mode layout).
const (
	ModeType    = 0o170000
	TypeSocket  = 0o140000
	TypeSymlink = 0o120000
	TypeReg     = 0o100000
	TypeBlock   = 0o060000
	TypeDir     = 0o040000
	TypeChar    = 0o020000
	TypeFifo    = 0o010000
	ModeSetuid  = 0o4000
	ModeSetgid  = 0o2000
	ModeSticky  = 0o1000
	ModePerm    = 0o777
)

const (
	magic      = "070701"
	headerSize = 110
	// Trailer is the name of the entry that ends an archive.
	Trailer = "TRAILER!!!"
	// MaxSize is the largest file a newc archive can hold (32-bit size field).
	MaxSize = math.MaxUint32
	// MaxNameSize bounds names when reading (PATH_MAX).
	MaxNameSize = 4096
	// BlockSize is what archives are padded to, as AWS's images are.
	BlockSize = 512
)

// Header is one archive entry.
type Header struct {
	// Name is the path inside the archive, without a leading "/".
	Name string
	// Mode is the file type (Type*) and permission bits.
	Mode uint32
	UID  uint32
	GID  uint32
	// Nlink is the link count; 0 means 2 for directories and 1 otherwise.
	Nlink uint32
	// Mtime is in seconds since the epoch; values outside 0..2^32-1 are clamped.
	Mtime int64
	// Size is the data size. For symlinks it is set from Linkname.
	Size int64
	// Ino is the inode number; 0 lets the Writer assign the next free one.
	// Hard links share an Ino (see Writer.NextIno).
	Ino uint32
	// DevMajor and DevMinor are the device of the file itself (kept 0 by
	// this package's writers).
	DevMajor, DevMinor uint32
	// RDevMajor and RDevMinor are the device numbers of a device node.
	RDevMajor, RDevMinor uint32
	// Linkname is a symlink's target.
	Linkname string
}

// Writer writes a newc archive.
type Writer struct {
	w         io.Writer
	off       int64
	remaining int64
	pad       int64
	nextIno   uint32
	closed    bool
	err       error
	buf       [headerSize]byte
}

// NewWriter writes an archive to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w, nextIno: 1} }

// NextIno reserves an inode number, for a group of hard links.
func (w *Writer) NextIno() uint32 {
	n := w.nextIno
	w.nextIno++
	return n
}

func (w *Writer) write(p []byte) error {
	if w.err != nil {
		return w.err
	}
	n, err := w.w.Write(p)
	w.off += int64(n)
	if err != nil {
		w.err = err
	}
	return err
}

var zeros [BlockSize]byte

// WriteHeader writes h. The previous entry's data must be complete.
// For a symlink the target (h.Linkname) is written as its data here.
func (w *Writer) WriteHeader(h *Header) error {
	if w.closed {
		return errors.New("writing cpio header: archive is closed")
	}
	if w.remaining > 0 {
		return fmt.Errorf("writing cpio header for %q: %d bytes of the previous entry are missing", h.Name, w.remaining)
	}
	if err := w.write(zeros[:w.pad]); err != nil {
		return err
	}
	w.pad = 0
	size := h.Size
	if h.Mode&ModeType == TypeSymlink {
		size = int64(len(h.Linkname))
	}
	if size < 0 || size > MaxSize {
		return fmt.Errorf("writing cpio header for %q: size %d does not fit the newc format (at most %d bytes)", h.Name, size, int64(MaxSize))
	}
	if h.Name == "" || len(h.Name)+1 > MaxNameSize {
		return fmt.Errorf("writing cpio header: name %q is empty or longer than %d bytes", h.Name, MaxNameSize-1)
	}
	ino := h.Ino
	if ino == 0 && h.Name != Trailer {
		ino = w.NextIno()
	}
	nlink := h.Nlink
	if nlink == 0 {
		nlink = 1
		if h.Mode&ModeType == TypeDir {
			nlink = 2
		}
	}
	mtime := h.Mtime
	if mtime < 0 {
		mtime = 0
	}
	if mtime > math.MaxUint32 {
		mtime = math.MaxUint32
	}
	b := w.buf[:]
	copy(b, magic)
	for i, v := range []uint32{ino, h.Mode, h.UID, h.GID, nlink, uint32(mtime), uint32(size), h.DevMajor, h.DevMinor, h.RDevMajor, h.RDevMinor, uint32(len(h.Name) + 1), 0} {
		putHex(b[6+8*i:], v)
	}
	if err := w.write(b); err != nil {
		return err
	}
	name := make([]byte, len(h.Name)+1, len(h.Name)+4)
	copy(name, h.Name)
	name = append(name, zeros[:pad4(headerSize+int64(len(name)))]...)
	if err := w.write(name); err != nil {
		return err
	}
	w.remaining = size
	w.pad = pad4(size)
	if h.Mode&ModeType == TypeSymlink {
		if _, err := w.Write([]byte(h.Linkname)); err != nil {
			return err
		}
	}
	return w.err
}

// Write writes the current entry's data.
func (w *Writer) Write(p []byte) (int, error) {
	if int64(len(p)) > w.remaining {
		return 0, fmt.Errorf("writing cpio data: %d bytes given, %d left in the entry", len(p), w.remaining)
	}
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.w.Write(p)
	w.off += int64(n)
	w.remaining -= int64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

// ReadFrom copies the current entry's data from r, which must supply
// exactly the size given in the header.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	want := w.remaining
	if w.err != nil {
		return 0, w.err
	}
	var n int64
	var err error
	if rf, ok := w.w.(io.ReaderFrom); ok {
		// Let the destination read straight into its own buffers.
		n, err = rf.ReadFrom(io.LimitReader(r, want))
		w.off += n
		w.remaining -= n
		if err != nil {
			w.err = err
		}
	} else {
		n, err = io.Copy(writerOnly{w}, io.LimitReader(r, want))
	}
	if err != nil {
		return n, err
	}
	if n != want {
		return n, fmt.Errorf("writing cpio data: source ended after %d of %d bytes", n, want)
	}
	return n, nil
}

type writerOnly struct{ io.Writer }

// Close writes the trailer and pads the archive to BlockSize. It does not
// close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	// The trailer has inode 0, as GNU cpio writes it.
	if err := w.WriteHeader(&Header{Name: Trailer, Nlink: 1}); err != nil {
		return err
	}
	w.closed = true
	if err := w.write(zeros[:pad(w.off, BlockSize)]); err != nil {
		return err
	}
	return nil
}

// Offset is the number of bytes written so far.
func (w *Writer) Offset() int64 { return w.off }

func pad4(n int64) int64 { return pad(n, 4) }

func pad(n, to int64) int64 { return (to - n%to) % to }

const hexDigits = "0123456789abcdef"

func putHex(b []byte, v uint32) {
	for i := 7; i >= 0; i-- {
		b[i] = hexDigits[v&0xf]
		v >>= 4
	}
}
