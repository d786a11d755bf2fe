package eif

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
)

// Section is one section of an EIF as found by Open.
type Section struct {
	// Index is the section's position in the section table.
	Index int
	// Type is the section type.
	Type SectionType
	// Offset is the file offset of the section's header; its data follows
	// SectionHeaderSize bytes later.
	Offset int64
	// Size is the size of the section's data.
	Size int64
}

// DataOffset is the file offset of the section's data.
func (s Section) DataOffset() int64 { return s.Offset + SectionHeaderSize }

// File is an EIF opened for reading.
type File struct {
	Header   Header
	Sections []Section
	r        io.ReaderAt
	size     int64
}

// Open reads and validates an EIF's structure: magic, version, section count,
// the section table (each section header at the offset the table says, right
// after the previous one, with a valid type, zero flags and the size the
// table says), the section types an EIF must have (one kernel, one cmdline,
// any number of ramdisks, at most one signature and one metadata section, the
// signature last; an image without ramdisks reads, though it cannot boot), and that the file ends with the last section. It does not
// read section data; Verify checks the CRC, measurements and signature.
func Open(r io.ReaderAt, size int64) (*File, error) {
	if size < HeaderSize {
		return nil, &FormatError{Offset: 0, Field: "header", Err: fmt.Errorf("file is %d bytes, shorter than the %d-byte header", size, HeaderSize)}
	}
	hb := make([]byte, HeaderSize)
	if _, err := r.ReadAt(hb, 0); err != nil {
		return nil, fmt.Errorf("reading eif header: %w", err)
	}
	h, err := parseHeader(hb)
	if err != nil {
		return nil, err
	}
	f := &File{Header: h, r: r, size: size}
	n := int(h.NumSections)
	if n == 0 {
		return nil, &FormatError{Offset: 26, Field: "number of sections", Err: fmt.Errorf("no sections")}
	}
	for i := n; i < MaxSections; i++ {
		if h.SectionOffsets[i] != 0 || h.SectionSizes[i] != 0 {
			return nil, &FormatError{Offset: int64(28 + 8*i), Field: fmt.Sprintf("section table slot %d", i), Err: fmt.Errorf("unused slot holds offset %d size %d, want 0", h.SectionOffsets[i], h.SectionSizes[i])}
		}
	}
	next := int64(HeaderSize)
	counts := map[SectionType]int{}
	sb := make([]byte, SectionHeaderSize)
	for i := 0; i < n; i++ {
		off, sz := h.SectionOffsets[i], h.SectionSizes[i]
		if off != uint64(next) {
			return nil, &FormatError{Offset: int64(28 + 8*i), Field: fmt.Sprintf("section %d offset", i), Err: fmt.Errorf("is %d, want %d (sections follow each other without gaps)", off, next)}
		}
		if sz > uint64(size) || next+SectionHeaderSize+int64(sz) > size {
			return nil, &FormatError{Offset: int64(284 + 8*i), Field: fmt.Sprintf("section %d size", i), Err: fmt.Errorf("%d bytes of data at offset %d run past the end of the %d-byte file", sz, next+SectionHeaderSize, size)}
		}
		if _, err := r.ReadAt(sb, next); err != nil {
			return nil, fmt.Errorf("reading eif section %d header: %w", i, err)
		}
		t := SectionType(binary.BigEndian.Uint16(sb))
		if !t.Valid() {
			return nil, &FormatError{Offset: next, Field: fmt.Sprintf("section %d type", i), Err: fmt.Errorf("invalid section type %d", uint16(t))}
		}
		if fl := binary.BigEndian.Uint16(sb[2:]); fl != 0 {
			return nil, &FormatError{Offset: next + 2, Field: fmt.Sprintf("section %d flags", i), Err: fmt.Errorf("is %#x, want 0", fl)}
		}
		if hs := binary.BigEndian.Uint64(sb[4:]); hs != sz {
			return nil, &FormatError{Offset: next + 4, Field: fmt.Sprintf("section %d (%s) size", i, t), Err: fmt.Errorf("section header says %d, section table says %d", hs, sz)}
		}
		if counts[SectionSignature] > 0 {
			return nil, &FormatError{Offset: next, Field: fmt.Sprintf("section %d type", i), Err: fmt.Errorf("%s section after the signature section (the signature must be last)", t)}
		}
		if t == SectionSignature && sz > MaxSignatureSize {
			return nil, &FormatError{Offset: next + 4, Field: fmt.Sprintf("section %d (signature) size", i), Err: fmt.Errorf("%d bytes, at most %d allowed", sz, MaxSignatureSize)}
		}
		counts[t]++
		f.Sections = append(f.Sections, Section{Index: i, Type: t, Offset: next, Size: int64(sz)})
		next += SectionHeaderSize + int64(sz)
	}
	if next != size {
		return nil, &FormatError{Offset: next, Field: "end of file", Err: fmt.Errorf("%d bytes follow the last section", size-next)}
	}
	for _, c := range []struct {
		t        SectionType
		min, max int
	}{{SectionKernel, 1, 1}, {SectionCmdline, 1, 1}, {SectionRamdisk, 0, MaxSections}, {SectionSignature, 0, 1}, {SectionMetadata, 0, 1}} {
		if got := counts[c.t]; got < c.min || got > c.max {
			return nil, &FormatError{Offset: 26, Field: "sections", Err: fmt.Errorf("%d %s sections, want %d..%d", got, c.t, c.min, c.max)}
		}
	}
	return f, nil
}

// Size is the file size.
func (f *File) Size() int64 { return f.size }

// Data returns a reader of a section's data.
func (f *File) Data(s Section) *io.SectionReader {
	return io.NewSectionReader(f.r, s.DataOffset(), s.Size)
}

// ReadSection returns a small section's data (cmdline, metadata, signature);
// it refuses sections above limit bytes.
func (f *File) ReadSection(s Section, limit int64) ([]byte, error) {
	if s.Size > limit {
		return nil, fmt.Errorf("reading eif %s section: %d bytes, more than the %d expected", s.Type, s.Size, limit)
	}
	b := make([]byte, s.Size)
	if _, err := f.r.ReadAt(b, s.DataOffset()); err != nil {
		return nil, fmt.Errorf("reading eif %s section: %w", s.Type, err)
	}
	return b, nil
}

// First returns the first section of type t.
func (f *File) First(t SectionType) (Section, bool) {
	for _, s := range f.Sections {
		if s.Type == t {
			return s, true
		}
	}
	return Section{}, false
}

// Report is the result of Verify: what `nitro-cli describe-eif` shows.
type Report struct {
	Measurements Measurements
	// CRCOK reports whether the stored CRC matches; ComputedCRC is the
	// file's actual CRC.
	CRCOK       bool
	ComputedCRC uint32
	// Signed reports a signature section; SignatureOK that it verifies and
	// covers PCR0; Signature is its content when it could be decoded.
	Signed       bool
	SignatureOK  bool
	SignatureErr error
	Signature    *SignatureInfo
	// Metadata is the metadata section (nil when absent or not JSON).
	Metadata    *Metadata
	MetadataErr error
	// Cmdline is the kernel command line.
	Cmdline string
}

// Verify reads the whole file once, computing its CRC and measurements, and
// checks the signature when there is one. It returns an error wrapping ErrCRC
// or ErrSignature when a check fails, along with the full report.
func (f *File) Verify() (*Report, error) {
	hb := make([]byte, HeaderSize)
	if _, err := f.r.ReadAt(hb, 0); err != nil {
		return nil, fmt.Errorf("reading eif header: %w", err)
	}
	crc := crc32.ChecksumIEEE(hb[:crcOffset])
	m := newMeasurer()
	defer m.finish()
	rep := &Report{}
	var sigData []byte
	hdr := make([]byte, SectionHeaderSize)
	for _, s := range f.Sections {
		if _, err := f.r.ReadAt(hdr, s.Offset); err != nil {
			return nil, fmt.Errorf("reading eif section %d header: %w", s.Index, err)
		}
		crc = crc32.Update(crc, crc32.IEEETable, hdr)
		m.begin(s.Type)
		var small bytes.Buffer
		for off := int64(0); off < s.Size; {
			c := m.get()
			n := min(int64(cap(c.b)), s.Size-off)
			c.b = c.b[:n]
			if _, err := f.r.ReadAt(c.b, s.DataOffset()+off); err != nil {
				c.b = c.b[:0]
				m.submit(c)
				return nil, fmt.Errorf("reading eif %s section: %w", s.Type, err)
			}
			off += n
			crc = crc32.Update(crc, crc32.IEEETable, c.b)
			if s.Type != SectionKernel && s.Type != SectionRamdisk && small.Len() < 1<<20 {
				small.Write(c.b)
			}
			m.submit(c)
		}
		switch s.Type {
		case SectionCmdline:
			rep.Cmdline = small.String()
		case SectionSignature:
			sigData = small.Bytes()
		case SectionMetadata:
			md := new(Metadata)
			if err := json.Unmarshal(small.Bytes(), md); err != nil {
				rep.MetadataErr = fmt.Errorf("decoding eif metadata: %w", err)
			} else {
				rep.Metadata = md
			}
		}
	}
	m.finish()
	rep.Measurements = m.result()
	rep.ComputedCRC = crc
	rep.CRCOK = crc == f.Header.CRC
	var errs []error
	if !rep.CRCOK {
		errs = append(errs, fmt.Errorf("%w: header says %#08x, file has %#08x", ErrCRC, f.Header.CRC, crc))
	}
	if sigData != nil {
		rep.Signed = true
		pcr0, _ := hex.DecodeString(rep.Measurements.PCR0)
		info, err := VerifySignature(sigData, pcr0)
		rep.Signature = info
		if info != nil {
			rep.Measurements.PCR8 = info.PCR8
		}
		if err != nil {
			rep.SignatureErr = err
			errs = append(errs, err)
		} else {
			rep.SignatureOK = true
		}
	}
	if len(errs) == 1 {
		return rep, errs[0]
	}
	if len(errs) > 1 {
		return rep, fmt.Errorf("%w; %w", errs[0], errs[1])
	}
	return rep, nil
}
