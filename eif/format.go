package eif

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The file layout (docs/EIF-FORMAT.md "File layout"). All integers are big-endian.
const (
	// Magic starts every EIF.
	Magic = ".eif"
	// Version is the format version this package writes.
	Version = 4
	// HeaderSize is the size of the file header.
	HeaderSize = 548
	// SectionHeaderSize is the size of each section's header.
	SectionHeaderSize = 12
	// MaxSections is the number of slots in the header's section table.
	MaxSections = 32
	// MaxSignatureSize is the largest signature section nitro-cli accepts.
	MaxSignatureSize = 32 << 10

	// FlagAarch64 marks an aarch64 image in the header flags.
	FlagAarch64 = 1

	// DefaultMemory and DefaultCPUs are what AWS's builder writes in the
	// header (the fields are unused).
	DefaultMemory = 1 << 30
	DefaultCPUs   = 2

	crcOffset = 544
)

// SectionType is the type of an EIF section.
type SectionType uint16

// Section types (0 and values above SectionMetadata are invalid).
const (
	SectionKernel    SectionType = 1
	SectionCmdline   SectionType = 2
	SectionRamdisk   SectionType = 3
	SectionSignature SectionType = 4
	SectionMetadata  SectionType = 5
)

// String names the section type as AWS's tools do.
func (t SectionType) String() string {
	switch t {
	case SectionKernel:
		return "kernel"
	case SectionCmdline:
		return "cmdline"
	case SectionRamdisk:
		return "ramdisk"
	case SectionSignature:
		return "signature"
	case SectionMetadata:
		return "metadata"
	}
	return fmt.Sprintf("invalid(%d)", uint16(t))
}

// Valid reports whether t is a known section type.
func (t SectionType) Valid() bool { return t >= SectionKernel && t <= SectionMetadata }

// Header is the decoded 548-byte file header.
type Header struct {
	Version        uint16
	Flags          uint16
	DefaultMemory  uint64
	DefaultCPUs    uint64
	NumSections    uint16
	SectionOffsets [MaxSections]uint64
	SectionSizes   [MaxSections]uint64
	CRC            uint32
}

// MarshalBinary encodes the header (with Magic) into HeaderSize bytes.
func (h *Header) MarshalBinary() ([]byte, error) {
	b := make([]byte, HeaderSize)
	copy(b, Magic)
	binary.BigEndian.PutUint16(b[4:], h.Version)
	binary.BigEndian.PutUint16(b[6:], h.Flags)
	binary.BigEndian.PutUint64(b[8:], h.DefaultMemory)
	binary.BigEndian.PutUint64(b[16:], h.DefaultCPUs)
	binary.BigEndian.PutUint16(b[26:], h.NumSections)
	for i := 0; i < MaxSections; i++ {
		binary.BigEndian.PutUint64(b[28+8*i:], h.SectionOffsets[i])
		binary.BigEndian.PutUint64(b[284+8*i:], h.SectionSizes[i])
	}
	binary.BigEndian.PutUint32(b[crcOffset:], h.CRC)
	return b, nil
}

// parseHeader decodes b (HeaderSize bytes), checking the magic and the fields
// that have fixed values.
func parseHeader(b []byte) (Header, error) {
	var h Header
	if string(b[:4]) != Magic {
		return h, &FormatError{Offset: 0, Field: "magic", Err: fmt.Errorf("got %q, want %q", b[:4], Magic)}
	}
	h.Version = binary.BigEndian.Uint16(b[4:])
	h.Flags = binary.BigEndian.Uint16(b[6:])
	h.DefaultMemory = binary.BigEndian.Uint64(b[8:])
	h.DefaultCPUs = binary.BigEndian.Uint64(b[16:])
	h.NumSections = binary.BigEndian.Uint16(b[26:])
	for i := 0; i < MaxSections; i++ {
		h.SectionOffsets[i] = binary.BigEndian.Uint64(b[28+8*i:])
		h.SectionSizes[i] = binary.BigEndian.Uint64(b[284+8*i:])
	}
	h.CRC = binary.BigEndian.Uint32(b[crcOffset:])
	if h.Version == 0 || h.Version > Version {
		return h, &FormatError{Offset: 4, Field: "version", Err: fmt.Errorf("unsupported version %d (this reader knows 1..%d)", h.Version, Version)}
	}
	if h.NumSections > MaxSections {
		return h, &FormatError{Offset: 26, Field: "number of sections", Err: fmt.Errorf("%d sections, at most %d fit the section table", h.NumSections, MaxSections)}
	}
	return h, nil
}

func sectionHeader(t SectionType, size uint64) []byte {
	b := make([]byte, SectionHeaderSize)
	binary.BigEndian.PutUint16(b, uint16(t))
	binary.BigEndian.PutUint64(b[4:], size)
	return b
}

// ErrFormat is wrapped by every *FormatError: the file is not a valid EIF.
var ErrFormat = errors.New("invalid eif")

// ErrCRC means the CRC-32 stored in the header does not match the file.
var ErrCRC = errors.New("eif crc mismatch")

// ErrSignature means a signed EIF's signature does not verify.
var ErrSignature = errors.New("eif signature invalid")

// FormatError is a structural fault in an EIF: which field, where, and why.
type FormatError struct {
	// Offset is the file offset of the faulty field.
	Offset int64
	// Field names the field ("magic", "section 2 size", …).
	Field string
	// Err says what is wrong with it.
	Err error
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("invalid eif: %s at offset %d: %v", e.Field, e.Offset, e.Err)
}

// Unwrap returns the cause; errors.Is(err, ErrFormat) holds for every FormatError.
func (e *FormatError) Unwrap() []error { return []error{ErrFormat, e.Err} }
