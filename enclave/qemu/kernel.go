package qemu

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// Booting a bzImage under TCG spends most of the boot decompressing the
// kernel inside the guest (about 3 s of 5 for Debian's xz-compressed kernel).
// QEMU also boots an uncompressed kernel ELF through its PVH entry point, so
// the backend decompresses the EIF's kernel once on the host, caches the ELF
// by the bzImage's digest, and boots that: the same kernel code, 2–3× faster
// to a running init. Kernels it cannot unpack (other compressions, no PVH
// entry) boot as they are.

// xenElfNotePhys32Entry is the ELF note (owner "Xen") that marks a PVH entry
// point (XEN_ELFNOTE_PHYS32_ENTRY).
const xenElfNotePhys32Entry = 18

// maxUnpackedKernel bounds an unpacked kernel (Debian's is 63 MiB).
const maxUnpackedKernel = 512 << 20

var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// directKernel returns the path of the uncompressed, PVH-bootable ELF of the
// bzImage at kernel, from cacheDir or unpacked into it.
func directKernel(cacheDir, kernel string) (string, error) {
	data, err := os.ReadFile(kernel)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	path := filepath.Join(cacheDir, "vmlinux-"+hex.EncodeToString(sum[:16])+".elf")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	payload, err := bzImagePayload(data)
	if err != nil {
		return "", err
	}
	if !bytes.HasPrefix(payload, xzMagic) {
		return "", errors.New("kernel payload is not xz-compressed")
	}
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(cacheDir, ".vmlinux-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	cmd := exec.Command("xz", "--decompress", "--stdout", "--single-stream")
	cmd.Stdin = bytes.NewReader(payload)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("decompressing the kernel with xz: %w", err)
	}
	// An EIF may come from anywhere: bound what its kernel unpacks to.
	n, err := io.Copy(tmp, io.LimitReader(out, maxUnpackedKernel+1))
	if n > maxUnpackedKernel {
		_ = cmd.Process.Kill()
		err = fmt.Errorf("the kernel unpacks to more than %d MiB", maxUnpackedKernel>>20)
	}
	if werr := cmd.Wait(); err == nil && werr != nil {
		err = fmt.Errorf("%w: %s", werr, bytes.TrimSpace(stderr.Bytes()))
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("decompressing the kernel with xz: %w", err)
	}
	if err := checkPVH(tmp.Name()); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return path, nil
}

// bzImagePayload returns the compressed kernel inside a bzImage (Linux x86
// boot protocol ≥ 2.08: payload_offset/payload_length, relative to the
// protected-mode code after the setup sectors).
func bzImagePayload(b []byte) ([]byte, error) {
	if len(b) < 0x250 || string(b[0x202:0x206]) != "HdrS" {
		return nil, errors.New("kernel is not a bzImage")
	}
	if binary.LittleEndian.Uint16(b[0x206:]) < 0x208 {
		return nil, errors.New("bzImage boot protocol older than 2.08")
	}
	setup := int(b[0x1f1])
	if setup == 0 {
		setup = 4
	}
	start := (setup+1)*512 + int(binary.LittleEndian.Uint32(b[0x248:]))
	end := start + int(binary.LittleEndian.Uint32(b[0x24c:]))
	if start < 0 || end > len(b) || start >= end {
		return nil, errors.New("bzImage payload out of bounds")
	}
	return b[start:end], nil
}

// maxNoteSegment bounds a PT_NOTE segment of the unpacked kernel (Linux's
// are a few hundred bytes).
const maxNoteSegment = 1 << 20

// checkPVH checks that path is an x86-64 ELF with a PVH entry note.
func checkPVH(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return checkPVHReader(f, fi.Size())
}

// checkPVHReader is checkPVH of an ELF of size bytes. The kernel comes from
// an EIF, which may come from anywhere: every size in its headers is checked
// against the file and maxNoteSegment before anything is allocated.
func checkPVHReader(r io.ReaderAt, size int64) error {
	f, err := elf.NewFile(r)
	if err != nil {
		return fmt.Errorf("unpacked kernel is not an ELF: %w", err)
	}
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("unpacked kernel is for %v", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		if p.Off > uint64(size) || p.Filesz > uint64(size)-p.Off {
			return fmt.Errorf("unpacked kernel: a note segment of %d bytes at offset %d lies outside the %d-byte file", p.Filesz, p.Off, size)
		}
		if p.Filesz > maxNoteSegment {
			return fmt.Errorf("unpacked kernel: a note segment of %d bytes is larger than %d", p.Filesz, maxNoteSegment)
		}
		notes := make([]byte, p.Filesz)
		if _, err := p.ReadAt(notes, 0); err != nil {
			return err
		}
		for len(notes) >= 12 {
			namesz := int(binary.LittleEndian.Uint32(notes))
			descsz := int(binary.LittleEndian.Uint32(notes[4:]))
			typ := binary.LittleEndian.Uint32(notes[8:])
			n := 12 + (namesz+3)&^3 + (descsz+3)&^3
			if namesz > len(notes)-12 || n > len(notes) || n <= 12 {
				break
			}
			if string(bytes.TrimRight(notes[12:12+namesz], "\x00")) == "Xen" && typ == xenElfNotePhys32Entry {
				return nil
			}
			notes = notes[n:]
		}
	}
	return errors.New("unpacked kernel has no PVH entry point")
}
