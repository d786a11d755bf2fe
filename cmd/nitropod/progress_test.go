package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// withStderr runs fn with os.Stderr replaced by w.
func withStderr(t *testing.T, w *os.File, fn func()) {
	t.Helper()
	old := os.Stderr
	os.Stderr = w
	defer func() { os.Stderr = old }()
	fn()
}

// An S3 transfer reports its progress on a terminal, and nothing on a pipe.
func TestTransferProgressOnlyOnTerminal(t *testing.T) {
	old := transferTick
	transferTick = 20 * time.Millisecond
	defer func() { transferTick = old }()
	dst := filepath.Join(t.TempDir(), "app.eif")
	if err := os.WriteFile(filepath.Join(filepath.Dir(dst), ".app.eif.part-123"), make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	transfer := func() {
		stop := watchTransfer("downloading s3://b/app.eif", pulled(dst))
		time.Sleep(150 * time.Millisecond)
		stop()
	}

	ptm, pts := openPTY(t)
	var term bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _, _ = io.Copy(&term, ptm) }()
	withStderr(t, pts, transfer)
	pts.Close()
	wg.Wait()
	if !strings.Contains(term.String(), "downloading s3://b/app.eif: 3.0 MiB") {
		t.Errorf("on a terminal: %q; want progress lines", term.String())
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	withStderr(t, w, transfer)
	w.Close()
	out, _ := io.ReadAll(r)
	if len(out) != 0 {
		t.Errorf("on a pipe: %q; want nothing", out)
	}
}

// A long EIF build is reported while it lasts, on a terminal.
func TestRunProgressTicksWhileBuilding(t *testing.T) {
	old := progressTick
	progressTick = 20 * time.Millisecond
	defer func() { progressTick = old }()
	ptm, pts := openPTY(t)
	var term bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _, _ = io.Copy(&term, ptm) }()
	withStderr(t, pts, func() {
		p := terminalProgress()
		p("building EIF from big:latest")
		time.Sleep(100 * time.Millisecond)
		p("booting enclave (2 vCPU, 512 MiB)")
		time.Sleep(60 * time.Millisecond)
		p("")
	})
	pts.Close()
	wg.Wait()
	s := term.String()
	if !strings.Contains(s, "still building the EIF") {
		t.Errorf("no build ticks: %q", s)
	}
	_, after, found := strings.Cut(s, "booting enclave")
	if !found || strings.Contains(after, "still building") {
		t.Errorf("ticks after the build ended: %q", s)
	}
}
