package build

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitropod/nitropod/internal/testenv"
)

// staticELF is a minimal statically linked x86-64 ELF executable header
// (no program headers, so neither PT_INTERP nor a dynamic section): enough
// for CheckInit, not for running.
func staticELF() []byte {
	b := make([]byte, 64)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	binary.LittleEndian.PutUint16(b[16:], 2)  // ET_EXEC
	binary.LittleEndian.PutUint16(b[18:], 62) // EM_X86_64
	binary.LittleEndian.PutUint32(b[20:], 1)
	binary.LittleEndian.PutUint16(b[52:], 64)
	binary.LittleEndian.PutUint16(b[54:], 56)
	return b
}

func TestCheckInit(t *testing.T) {
	dir := t.TempDir()
	static := filepath.Join(dir, "static")
	text := filepath.Join(dir, "script")
	if err := os.WriteFile(static, staticELF(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(text, []byte("#!/bin/sh\nexec /app\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := CheckInit(static); err != nil {
		t.Errorf("static ELF: %v", err)
	}
	for _, tc := range []struct{ path, want string }{
		{text, "not an ELF executable"},
		{filepath.Join(dir, "missing"), "no such file"},
	} {
		if err := CheckInit(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckInit(%s) = %v, want an error containing %q", tc.path, err, tc.want)
		}
	}
	// A real dynamically linked executable of the host.
	dyn, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no `true` executable on this host")
	}
	err = CheckInit(dyn)
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("CheckInit(%s) = %v, want a refusal saying to build it static", dyn, err)
	}
}

// TestCheckInitNitropodInit: the repository's own init, built as the
// Makefile builds it (static), passes.
func TestCheckInitNitropodInit(t *testing.T) {
	testenv.Integration(t)
	out := filepath.Join(t.TempDir(), "nitropod-init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/nitropod-init")
	cmd.Dir = testenv.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building nitropod-init: %v\n%s", err, b)
	}
	if err := CheckInit(out); err != nil {
		t.Errorf("nitropod-init: %v", err)
	}
}
