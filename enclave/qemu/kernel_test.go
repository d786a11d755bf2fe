package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nitropod/nitropod/internal/testenv"
)

func fakeBzImage(proto uint16, setup byte, off, length uint32, size int) []byte {
	b := make([]byte, size)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], proto)
	b[0x1f1] = setup
	binary.LittleEndian.PutUint32(b[0x248:], off)
	binary.LittleEndian.PutUint32(b[0x24c:], length)
	return b
}

func TestBzImagePayload(t *testing.T) {
	good := fakeBzImage(0x20f, 2, 16, 6, 4096)
	copy(good[3*512+16:], xzMagic)
	p, err := bzImagePayload(good)
	if err != nil || string(p) != string(xzMagic) {
		t.Errorf("payload = %x, %v; want the xz magic", p, err)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"short", []byte("MZ"), "not a bzImage"},
		{"no HdrS", make([]byte, 4096), "not a bzImage"},
		{"old protocol", fakeBzImage(0x206, 2, 16, 6, 4096), "older than 2.08"},
		{"out of bounds", fakeBzImage(0x20f, 2, 4000, 600, 4096), "out of bounds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := bzImagePayload(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestCheckPVHRejects(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(p, []byte("not an elf"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkPVH(p); err == nil {
		t.Error("checkPVH accepted a non-ELF file")
	}
	// This test binary is an ELF without a PVH note.
	if exe, err := os.Executable(); err == nil {
		if err := checkPVH(exe); err == nil || !strings.Contains(err.Error(), "no PVH entry point") {
			t.Errorf("checkPVH(test binary) = %v, want no PVH entry point", err)
		}
	}
}

// The emulation kernel unpacks to a PVH-bootable ELF, once.
func TestDirectKernel(t *testing.T) {
	testenv.Integration(t)
	kernel := filepath.Join(testenv.EmuBlobs(t), "bzImage")
	testenv.Binary(t, "xz")
	dir := t.TempDir()
	p1, err := directKernel(dir, kernel)
	if err != nil {
		t.Fatal(err)
	}
	fi1, err := os.Stat(p1)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := directKernel(dir, kernel)
	if err != nil || p2 != p1 {
		t.Fatalf("second call: %q, %v; want the cached %q", p2, err, p1)
	}
	if fi2, _ := os.Stat(p2); !os.SameFile(fi1, fi2) {
		t.Error("the cached kernel was unpacked again")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("cache holds %d files, want 1", len(ents))
	}
}

// craftELF is a minimal x86-64 ELF with one PT_NOTE program header that
// claims filesz bytes at offset off, followed by body.
func craftELF(off, filesz uint64, body []byte) []byte {
	const ehsize, phsize = 64, 56
	b := make([]byte, ehsize+phsize)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little-endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], ehsize) // phoff
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], 1) // phnum
	ph := b[ehsize:]
	le.PutUint32(ph[0:], 4) // PT_NOTE
	le.PutUint64(ph[8:], off)
	le.PutUint64(ph[32:], filesz)
	le.PutUint64(ph[40:], filesz)
	return append(b, body...)
}

func pvhNote() []byte {
	n := make([]byte, 12, 20)
	binary.LittleEndian.PutUint32(n[0:], 4)
	binary.LittleEndian.PutUint32(n[4:], 4)
	binary.LittleEndian.PutUint32(n[8:], xenElfNotePhys32Entry)
	return append(n, "Xen\x00\x00\x00\x10\x00"...)
}

func TestCheckPVHCraftedSizes(t *testing.T) {
	note := pvhNote()
	good := craftELF(120, uint64(len(note)), note)
	if err := checkPVHReader(bytes.NewReader(good), int64(len(good))); err != nil {
		t.Fatalf("a well-formed PVH note: %v", err)
	}
	bigBody := make([]byte, maxNoteSegment+100)
	for _, tc := range []struct {
		name string
		elf  []byte
		want string
	}{
		{"segment larger than the file", craftELF(120, 256<<20, note), "outside the"},
		{"segment beyond the end", craftELF(1<<40, 20, note), "outside the"},
		{"offset plus size overflows", craftELF(120, ^uint64(0)-60, note), "kernel"}, // refused by debug/elf or by the check
		{"note segment over the cap", craftELF(120, maxNoteSegment+1, bigBody), "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := checkPVHReader(bytes.NewReader(tc.elf), int64(len(tc.elf)))
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("checkPVH = %v, want an error containing %q", err, tc.want)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 2*uint64(len(tc.elf))+(1<<20) {
				t.Errorf("allocated %d bytes for a %d-byte file", n, len(tc.elf))
			}
		})
	}
}

func FuzzCheckPVH(f *testing.F) {
	note := pvhNote()
	f.Add(craftELF(120, uint64(len(note)), note))
	f.Add(craftELF(120, 256<<20, note))
	f.Add(craftELF(1<<40, 20, note))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = checkPVHReader(bytes.NewReader(b), int64(len(b)))
	})
}

// TestStoppedErr: a boot that ends with QEMU's exit status 0 (a nil wait
// error) says so instead of formatting a nil.
func TestStoppedErr(t *testing.T) {
	exitErr := exec.Command("sh", "-c", "exit 3").Run()
	for _, tc := range []struct {
		name    string
		waitErr error
		stderr  string
		want    []string
	}{
		{"clean exit", nil, "", []string{"the enclave stopped during boot (qemu exited with status 0", "debug mode"}},
		{"clean exit with stderr", nil, "qemu: oops", []string{"status 0", "qemu: oops"}},
		{"failed", exitErr, "", []string{"(qemu exited: exit status 3)", "debug mode"}},
		{"failed with stderr", exitErr, "bad kernel", []string{"qemu exited: exit status 3", "bad kernel"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := stoppedErr("enclave init sent no heartbeat", tc.waitErr, tc.stderr)
			msg := err.Error()
			if strings.Contains(msg, "%!") || strings.Contains(msg, "<nil>") {
				t.Errorf("message formats a nil: %s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			if tc.waitErr != nil && !errors.Is(err, tc.waitErr) {
				t.Errorf("the wait error is not wrapped: %v", err)
			}
		})
	}
}
