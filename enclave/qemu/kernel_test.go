package qemu

import (
	"encoding/binary"
	"os"
	"path/filepath"
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
