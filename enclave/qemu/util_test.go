package qemu_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/internal/testimage"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// notifyBuffer closes ch once its content contains want.
type notifyBuffer struct {
	syncBuffer
	want string
	ch   chan struct{}
	once sync.Once
}

func (n *notifyBuffer) Write(p []byte) (int, error) {
	k, err := n.syncBuffer.Write(p)
	if strings.Contains(n.String(), n.want) {
		n.once.Do(func() { close(n.ch) })
	}
	return k, err
}

type countWriter struct {
	w io.Writer
	n int
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += len(p)
	return c.w.Write(p)
}

// withFile adds a layer with one file to img.
func withFile(t *testing.T, img v1.Image, name, data string) v1.Image {
	t.Helper()
	out, err := mutate.AppendLayers(img, testimage.Layer(t, testimage.Reg(name, 0o644, data)))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func copyFile(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func writeEIF(t *testing.T, img eif.Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.eif")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := eif.Write(f, img, eif.WriterOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}
