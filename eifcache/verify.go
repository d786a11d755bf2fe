package eifcache

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// EIF header facts (EIF-FORMAT.md): magic at 0, CRC-32 at 544 over the
// whole file except bytes 544..547.
const (
	eifHeaderSize = 548
	eifCRCOffset  = 544
)

var eifMagic = []byte(".eif")

// VerifyCRC checks the EIF file's magic and its CRC-32, the check nitro-cli
// describe-eif makes, so a truncated or corrupted cache file is refilled.
func VerifyCRC(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
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
