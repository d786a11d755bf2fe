package eif

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// WriterOptions configure a Writer.
type WriterOptions struct {
	// Flags go into the header (FlagAarch64 for aarch64 kernels).
	Flags uint16
	// Signer, when set, makes Close append a signature section over PCR0.
	Signer *Signer
}

// Writer writes an EIF section by section to an io.WriteSeeker. Data is
// streamed: each section's bytes go to the file as they are produced while
// the CRC-32 and the PCRs are computed in the same pass; Close writes the
// signature (when signing) and patches the header. Sections are written in
// the order they are created; AWS's order is kernel, cmdline, metadata,
// ramdisks (bootstrap first), signature (Build follows it).
//
// A Writer is not safe for concurrent use. After an error every further call
// returns that error. Close must be called, also after an error: it stops
// the goroutines that compute the digests.
type Writer struct {
	w        io.WriteSeeker
	opts     WriterOptions
	off      int64 // file offset of the next byte
	sections []sectionRec
	crc      uint32 // CRC-32 of the file from HeaderSize up to off
	crcLen   int64
	m        *measurer
	open     *sectionWriter
	err      error
	done     bool
	meas     Measurements
}

type sectionRec struct {
	typ  SectionType
	off  int64 // offset of the section header
	size int64
}

// NewWriter starts an EIF on w (positioned at the start of the file): it
// writes a placeholder header that Close replaces.
func NewWriter(w io.WriteSeeker, opts WriterOptions) (*Writer, error) {
	if _, err := w.Write(make([]byte, HeaderSize)); err != nil {
		return nil, fmt.Errorf("writing eif header: %w", err)
	}
	return &Writer{w: w, opts: opts, off: HeaderSize, m: newMeasurer()}, nil
}

// Create starts a section of type t and returns the writer its data goes to.
// The returned writer must be closed before the next section is created.
func (w *Writer) Create(t SectionType) (io.WriteCloser, error) {
	if w.err != nil {
		return nil, w.err
	}
	if w.done {
		return nil, errors.New("creating eif section: writer is closed")
	}
	if w.open != nil {
		return nil, fmt.Errorf("creating eif %s section: the %s section is still open", t, w.open.typ)
	}
	if !t.Valid() {
		return nil, fmt.Errorf("creating eif section: invalid section type %d", t)
	}
	if t == SectionSignature {
		return nil, errors.New("creating eif section: the signature section is written by Close (set WriterOptions.Signer)")
	}
	if len(w.sections)+1 > MaxSections-1 { // keep a slot for a signature
		return nil, fmt.Errorf("creating eif %s section: an eif holds at most %d sections", t, MaxSections)
	}
	if _, err := w.w.Write(make([]byte, SectionHeaderSize)); err != nil {
		return nil, w.fail(fmt.Errorf("writing eif %s section header: %w", t, err))
	}
	sw := &sectionWriter{w: w, typ: t, hdrOff: w.off, crcBefore: w.crc}
	w.off += SectionHeaderSize
	w.m.begin(t)
	w.open = sw
	return sw, nil
}

// WriteSection writes a whole section whose data is read from r.
func (w *Writer) WriteSection(t SectionType, r io.Reader) (int64, error) {
	sw, err := w.Create(t)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(sw, r)
	if err != nil {
		return n, w.fail(fmt.Errorf("writing eif %s section: %w", t, err))
	}
	return n, sw.Close()
}

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return w.err
}

type sectionWriter struct {
	w         *Writer
	typ       SectionType
	hdrOff    int64
	crcBefore uint32
	dataCRC   uint32
	size      int64
	closed    bool
	buf       *chunk // data not yet written: sections are written in whole chunks
}

func (s *sectionWriter) Write(p []byte) (int, error) {
	w := s.w
	if w.err != nil {
		return 0, w.err
	}
	if s.closed {
		return 0, fmt.Errorf("writing eif %s section: section is closed", s.typ)
	}
	n := 0
	for len(p) > 0 {
		if s.buf == nil {
			s.buf = w.m.get()
		}
		k := copy(s.buf.b[len(s.buf.b):cap(s.buf.b)], p)
		s.buf.b = s.buf.b[:len(s.buf.b)+k]
		p = p[k:]
		n += k
		if len(s.buf.b) == cap(s.buf.b) {
			if err := s.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// ReadFrom reads r to its end straight into the section's chunks (one copy
// less than Write, and reads of up to a chunk).
func (s *sectionWriter) ReadFrom(r io.Reader) (int64, error) {
	w := s.w
	if w.err != nil {
		return 0, w.err
	}
	if s.closed {
		return 0, fmt.Errorf("writing eif %s section: section is closed", s.typ)
	}
	var n int64
	for {
		if s.buf == nil {
			s.buf = w.m.get()
		}
		c := s.buf
		k, err := r.Read(c.b[len(c.b):cap(c.b)])
		c.b = c.b[:len(c.b)+k]
		n += int64(k)
		if len(c.b) == cap(c.b) {
			if ferr := s.flush(); ferr != nil {
				return n, ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// flush writes the buffered chunk to the file and hands it to the digests.
func (s *sectionWriter) flush() error {
	w := s.w
	c := s.buf
	s.buf = nil
	if c == nil {
		return w.err
	}
	_, err := w.w.Write(c.b)
	s.dataCRC = crc32.Update(s.dataCRC, crc32.IEEETable, c.b)
	s.size += int64(len(c.b))
	w.off += int64(len(c.b))
	w.m.submit(c)
	if err != nil {
		return w.fail(fmt.Errorf("writing eif %s section: %w", s.typ, err))
	}
	return nil
}

// Close ends the section: its header, which holds the data size, is patched
// in place.
func (s *sectionWriter) Close() error {
	w := s.w
	if s.closed {
		return w.err
	}
	s.closed = true
	w.open = nil
	if w.err != nil {
		return w.err
	}
	if err := s.flush(); err != nil {
		return err
	}
	hdr := sectionHeader(s.typ, uint64(s.size))
	if err := w.patch(s.hdrOff, hdr); err != nil {
		return w.fail(fmt.Errorf("writing eif %s section header: %w", s.typ, err))
	}
	hdrCRC := crc32.Update(s.crcBefore, crc32.IEEETable, hdr)
	w.crc = crc32Combine(hdrCRC, s.dataCRC, s.size)
	w.crcLen += SectionHeaderSize + s.size
	w.sections = append(w.sections, sectionRec{typ: s.typ, off: s.hdrOff, size: s.size})
	return nil
}

// patch writes b at off and returns to the end of the file.
func (w *Writer) patch(off int64, b []byte) error {
	if _, err := w.w.Seek(off, io.SeekStart); err != nil {
		return err
	}
	if _, err := w.w.Write(b); err != nil {
		return err
	}
	_, err := w.w.Seek(w.off, io.SeekStart)
	return err
}

// Close finishes the EIF: the signature section when signing, then the
// header with the section table and the CRC. It returns the measurements
// (with PCR8 when signed). w's position is left at the end of the file.
func (w *Writer) Close() (Measurements, error) {
	if w.done {
		return w.meas, w.err
	}
	w.done = true
	w.m.finish()
	if w.err != nil {
		return Measurements{}, w.err
	}
	if w.open != nil {
		return Measurements{}, w.fail(fmt.Errorf("closing eif: the %s section is still open", w.open.typ))
	}
	meas := w.m.result()
	if w.opts.Signer != nil {
		sig, err := w.opts.Signer.signatureSection(w.m.pcr0Raw())
		if err != nil {
			return Measurements{}, w.fail(err)
		}
		if err := w.appendRaw(SectionSignature, sig); err != nil {
			return Measurements{}, w.fail(err)
		}
		meas.PCR8 = w.opts.Signer.pcr8
	}
	h := Header{Version: Version, Flags: w.opts.Flags, DefaultMemory: DefaultMemory, DefaultCPUs: DefaultCPUs, NumSections: uint16(len(w.sections))}
	for i, s := range w.sections {
		h.SectionOffsets[i] = uint64(s.off)
		h.SectionSizes[i] = uint64(s.size)
	}
	hb, _ := h.MarshalBinary()
	crc := crc32.ChecksumIEEE(hb[:crcOffset])
	h.CRC = crc32Combine(crc, w.crc, w.crcLen)
	hb, _ = h.MarshalBinary()
	if err := w.patch(0, hb); err != nil {
		return Measurements{}, w.fail(fmt.Errorf("writing eif header: %w", err))
	}
	w.meas = meas
	return meas, nil
}

// appendRaw writes a section that the digests do not cover (the signature).
func (w *Writer) appendRaw(t SectionType, data []byte) error {
	hdr := sectionHeader(t, uint64(len(data)))
	if _, err := w.w.Write(append(hdr, data...)); err != nil {
		return fmt.Errorf("writing eif %s section: %w", t, err)
	}
	w.sections = append(w.sections, sectionRec{typ: t, off: w.off, size: int64(len(data))})
	w.crc = crc32.Update(w.crc, crc32.IEEETable, hdr)
	w.crc = crc32.Update(w.crc, crc32.IEEETable, data)
	w.crcLen += int64(len(hdr) + len(data))
	w.off += int64(len(hdr) + len(data))
	return nil
}
