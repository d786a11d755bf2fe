package eif

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to the reader and validator: they must
// return errors, never panic, and never read outside the file.
func FuzzOpen(f *testing.F) {
	var b seekBuffer
	if _, err := Write(&b, Image{Kernel: strings.NewReader("KERNEL"), Cmdline: "console=ttyS0", Metadata: &Metadata{ImageName: "x"}, Ramdisks: []io.Reader{strings.NewReader("R0"), strings.NewReader("R1")}}, WriterOptions{}); err != nil {
		f.Fatal(err)
	}
	f.Add(b.b)
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		ef, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Open error %v does not wrap ErrFormat", err)
			}
			return
		}
		var total int64 = HeaderSize
		for _, s := range ef.Sections {
			total += SectionHeaderSize + s.Size
		}
		if total != int64(len(data)) {
			t.Fatalf("sections cover %d bytes of %d", total, len(data))
		}
		rep, err := ef.Verify()
		if rep == nil {
			t.Fatalf("Verify returned no report: %v", err)
		}
		if err == nil && !rep.CRCOK {
			t.Fatal("Verify passed with a bad CRC")
		}
	})
}

// seekBuffer is an in-memory io.WriteSeeker.
type seekBuffer struct {
	b   []byte
	off int
}

func (s *seekBuffer) Write(p []byte) (int, error) {
	if n := s.off + len(p); n > len(s.b) {
		s.b = append(s.b, make([]byte, n-len(s.b))...)
	}
	copy(s.b[s.off:], p)
	s.off += len(p)
	return len(p), nil
}

func (s *seekBuffer) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		s.off = int(off)
	case io.SeekCurrent:
		s.off += int(off)
	case io.SeekEnd:
		s.off = len(s.b) + int(off)
	}
	return int64(s.off), nil
}
