package ramdisk

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// sparseLayer is a layer with one GNU sparse (PAX format 1.0) file of
// logical size realSize whose only data is its last byte, "x": about 2 KiB
// of tar that read as realSize bytes. archive/tar's Writer cannot write
// sparse files, so the blocks are made by hand.
func sparseLayer(t testing.TB, name string, realSize int64) []byte {
	t.Helper()
	var recs strings.Builder
	for _, kv := range [][2]string{{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"}, {"GNU.sparse.name", name}, {"GNU.sparse.realsize", fmt.Sprint(realSize)}} {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec) + 1
		for len(fmt.Sprint(n))+len(rec) != n {
			n++
		}
		recs.WriteString(fmt.Sprint(n) + rec)
	}
	sparseMap := fmt.Sprintf("1\n%d\n1\n", realSize-1)
	body := sparseMap + strings.Repeat("\x00", 512-len(sparseMap)) + "x"
	var b bytes.Buffer
	for _, e := range []struct {
		name string
		typ  byte
		data string
	}{{"PaxHeaders/" + name, tar.TypeXHeader, recs.String()}, {"GNUSparseFile.0/" + name, tar.TypeReg, body}} {
		b.Write(ustarHeader(e.name, e.typ, len(e.data)))
		b.WriteString(e.data)
		b.Write(make([]byte, (512-len(e.data)%512)%512))
	}
	b.Write(make([]byte, 1024))
	return b.Bytes()
}

func ustarHeader(name string, typ byte, size int) []byte {
	h := make([]byte, 512)
	copy(h, name)
	copy(h[100:], "0000644\x00")
	copy(h[108:], "0000000\x00")
	copy(h[116:], "0000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", size))
	copy(h[136:], "00000000000\x00")
	h[156] = typ
	copy(h[257:], "ustar\x0000")
	copy(h[148:], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func TestSparseFiles(t *testing.T) {
	// 4 GiB does not fit an initramfs: refused from the header, nothing read.
	_, err := ScanLayers(openers(sparseLayer(t, "huge", 4<<30)))
	var le *LayerError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), "below 4 GiB") || le.Entry != "huge" {
		t.Fatalf("4 GiB sparse file: err = %v, want the 4 GiB refusal naming huge", err)
	}
	// A large sparse file that fits streams through in bounded memory.
	const size = 128 << 20
	l, err := ScanLayers(openers(sparseLayer(t, "big", size)))
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var c countWriter
	if err := l.Write(&c, testProc); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if c.n < size {
		t.Errorf("ramdisk is %d bytes, want more than %d", c.n, size)
	}
	if grown := int64(after.Sys) - int64(before.Sys); grown > 32<<20 {
		t.Errorf("memory obtained from the OS grew by %d MiB while writing a %d MiB file", grown>>20, size>>20)
	}
	// And the zero-byte file beside it.
	const small = 1 << 20
	l, err = ScanLayers(openers(sparseLayer(t, "big", small), tarLayer(t, []file{{Name: "empty", Mode: reg | 0o644}})))
	if err != nil {
		t.Fatal(err)
	}
	tr, _ := readTree(t, mustWrite(t, l))
	var names []string
	for _, f := range tr {
		if f.Name == "big" && (len(f.Data) != small || f.Data[small-1] != 'x' || strings.Trim(f.Data[:small-1], "\x00") != "") {
			t.Error("big has the wrong content")
		}
		names = append(names, f.Name)
	}
	if !strings.Contains(strings.Join(names, " "), "empty") {
		t.Errorf("empty file missing: %v", names)
	}
}

func mustWrite(t *testing.T, l *Layers) []byte {
	var b bytes.Buffer
	if err := l.Write(&b, testProc); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
