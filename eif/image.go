package eif

import (
	"fmt"
	"io"
	"strings"
)

// Image is the content of an EIF, each part streamed from a reader.
type Image struct {
	// Kernel is the bzImage (x86_64) or Image (aarch64).
	Kernel io.Reader
	// Cmdline is the kernel command line; a trailing newline or NUL is dropped.
	Cmdline string
	// Metadata is written when set.
	Metadata *Metadata
	// Ramdisks are the bootstrap ramdisk followed by the customer ramdisks.
	Ramdisks []io.Reader
}

// Write writes img to w in AWS's section order (kernel, cmdline, metadata,
// ramdisks, signature) and returns its measurements.
func Write(w io.WriteSeeker, img Image, opts WriterOptions) (Measurements, error) {
	ew, err := NewWriter(w, opts)
	if err != nil {
		return Measurements{}, err
	}
	defer ew.m.finish()
	if _, err := ew.WriteSection(SectionKernel, img.Kernel); err != nil {
		return Measurements{}, err
	}
	if _, err := ew.WriteSection(SectionCmdline, strings.NewReader(CleanCmdline(img.Cmdline))); err != nil {
		return Measurements{}, err
	}
	if img.Metadata != nil {
		b, err := img.Metadata.MarshalJSON()
		if err != nil {
			return Measurements{}, err
		}
		if _, err := ew.WriteSection(SectionMetadata, strings.NewReader(string(b))); err != nil {
			return Measurements{}, err
		}
	}
	for i, r := range img.Ramdisks {
		if _, err := ew.WriteSection(SectionRamdisk, r); err != nil {
			return Measurements{}, fmt.Errorf("ramdisk %d: %w", i, err)
		}
	}
	return ew.Close()
}

// CleanCmdline drops what AWS's builder does not store: trailing newlines,
// NULs and spaces.
func CleanCmdline(s string) string { return strings.TrimRight(s, "\n\r\x00 ") }
