package eif

import (
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// SignFile signs the EIF in f as `nitro-cli sign-eif` does: an existing
// signature is replaced, the new signature section (over the image's PCR0)
// is appended, and the section table and CRC are rewritten. The file must
// be valid (its CRC must match). It returns the measurements with PCR8.
func SignFile(f *os.File, s *Signer) (Measurements, error) {
	fi, err := f.Stat()
	if err != nil {
		return Measurements{}, fmt.Errorf("signing eif: %w", err)
	}
	ef, err := Open(f, fi.Size())
	if err != nil {
		return Measurements{}, fmt.Errorf("signing eif: %w", err)
	}
	rep, err := ef.Verify()
	if err != nil && (rep == nil || !rep.CRCOK) {
		return Measurements{}, fmt.Errorf("signing eif: %w", err)
	}
	h := ef.Header
	end := fi.Size()
	n := len(ef.Sections)
	if last := ef.Sections[n-1]; last.Type == SectionSignature {
		end = last.Offset
		n--
		h.SectionOffsets[n], h.SectionSizes[n] = 0, 0
	}
	if n+1 > MaxSections {
		return Measurements{}, errors.New("signing eif: the section table is full")
	}
	pcr0, _ := hex.DecodeString(rep.Measurements.PCR0)
	sig, err := s.signatureSection(pcr0)
	if err != nil {
		return Measurements{}, err
	}
	if err := f.Truncate(end); err != nil {
		return Measurements{}, fmt.Errorf("signing eif: %w", err)
	}
	sec := append(sectionHeader(SectionSignature, uint64(len(sig))), sig...)
	if _, err := f.WriteAt(sec, end); err != nil {
		return Measurements{}, fmt.Errorf("signing eif: %w", err)
	}
	h.NumSections = uint16(n + 1)
	h.SectionOffsets[n], h.SectionSizes[n] = uint64(end), uint64(len(sig))
	// CRC: the new header's first 544 bytes, then every section as it now is.
	hb, _ := h.MarshalBinary()
	crc := crc32.ChecksumIEEE(hb[:crcOffset])
	tail := crc32.NewIEEE()
	if _, err := io.Copy(tail, io.NewSectionReader(f, HeaderSize, end+int64(len(sec))-HeaderSize)); err != nil {
		return Measurements{}, fmt.Errorf("signing eif: %w", err)
	}
	h.CRC = crc32Combine(crc, tail.Sum32(), end+int64(len(sec))-HeaderSize)
	hb, _ = h.MarshalBinary()
	if _, err := f.WriteAt(hb, 0); err != nil {
		return Measurements{}, fmt.Errorf("signing eif: %w", err)
	}
	m := rep.Measurements
	m.PCR8 = s.pcr8
	return m, nil
}
