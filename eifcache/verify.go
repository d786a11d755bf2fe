package eifcache

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/nitropod/nitropod/eif"
)

// EIF header facts (docs/EIF-FORMAT.md): magic at 0, CRC-32 at 544 over the
// whole file except bytes 544..547.
const (
	eifHeaderSize = 548
	eifCRCOffset  = 544
)

var eifMagic = []byte(".eif")

// VerifyCRC checks a cached EIF: its structure with the eif reader
// (eif.Open: header, section table, section types, file length) and its
// CRC-32, the check nitro-cli describe-eif makes, so a truncated or
// corrupted cache file is refilled. It does not recompute the measurements
// (eif.File.Verify), which would read the file through SHA-384 on every hit.
func VerifyCRC(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if _, err := eif.Open(f, fi.Size()); err != nil {
		return err
	}
	return verifyCRC(f)
}

func verifyCRC(r io.Reader) error {
	br := bufio.NewReaderSize(r, 1<<20)
	hdr := make([]byte, eifHeaderSize)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return fmt.Errorf("reading eif header: %w", err)
	}
	if string(hdr[:4]) != string(eifMagic) {
		return errors.New("reading eif header: bad magic")
	}
	h := crc32.NewIEEE()
	h.Write(hdr[:eifCRCOffset])
	if _, err := io.Copy(h, br); err != nil {
		return fmt.Errorf("reading eif sections: %w", err)
	}
	want := binary.BigEndian.Uint32(hdr[eifCRCOffset:])
	if got := h.Sum32(); got != want {
		return fmt.Errorf("eif crc mismatch: file says %08x, content has %08x", want, got)
	}
	return nil
}
