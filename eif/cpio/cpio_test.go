package cpio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nitropod/nitropod/internal/testenv"
)

type entry struct {
	Header
	Data string
}

func sample() []entry {
	return []entry{
		{Header: Header{Name: "dir", Mode: TypeDir | 0o755, Mtime: 100}},
		{Header: Header{Name: "dir/file", Mode: TypeReg | 0o644, UID: 1000, GID: 1001, Mtime: 200}, Data: "hello\n"},
		{Header: Header{Name: "dir/setuid", Mode: TypeReg | ModeSetuid | 0o755, Mtime: 300}, Data: "x"},
		{Header: Header{Name: "dir/link", Mode: TypeSymlink | 0o777, Linkname: "file"}},
		{Header: Header{Name: "dir/fifo", Mode: TypeFifo | 0o600}},
		{Header: Header{Name: "dir/null", Mode: TypeChar | 0o666, RDevMajor: 1, RDevMinor: 3}},
		{Header: Header{Name: "empty", Mode: TypeReg | 0o600}},
		{Header: Header{Name: "hl1", Mode: TypeReg | 0o644, Nlink: 2, Ino: 100}},
		{Header: Header{Name: "hl2", Mode: TypeReg | 0o644, Nlink: 2, Ino: 100}, Data: "linked"},
	}
}

func archive(t testing.TB, es []entry) []byte {
	t.Helper()
	var b bytes.Buffer
	w := NewWriter(&b)
	for _, e := range es {
		h := e.Header
		if h.Mode&ModeType != TypeSymlink {
			h.Size = int64(len(e.Data))
		}
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := w.ReadFrom(strings.NewReader(e.Data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func readAll(b []byte) ([]entry, error) {
	r := NewReader(bytes.NewReader(b))
	var out []entry
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		d, err := io.ReadAll(r)
		if err != nil {
			return out, err
		}
		out = append(out, entry{Header: *h, Data: string(d)})
	}
}

func TestRoundTrip(t *testing.T) {
	in := sample()
	b := archive(t, in)
	if len(b)%BlockSize != 0 {
		t.Errorf("archive is %d bytes, not a multiple of %d", len(b), BlockSize)
	}
	if !bytes.Equal(b, archive(t, in)) {
		t.Error("writing the same entries twice gave different bytes")
	}
	got, err := readAll(b)
	if err != nil {
		t.Fatal(err)
	}
	// Fill in what the writer decides.
	ino := uint32(1)
	for i := range in {
		h := &in[i].Header
		if h.Ino == 0 {
			h.Ino = ino
			ino++
		}
		if h.Nlink == 0 {
			h.Nlink = 1
			if h.Mode&ModeType == TypeDir {
				h.Nlink = 2
			}
		}
		h.Size = int64(len(in[i].Data))
		if h.Mode&ModeType == TypeSymlink {
			h.Size = int64(len(h.Linkname))
		}
	}
	if d := cmp.Diff(in, got); d != "" {
		t.Errorf("read back (-want +got):\n%s", d)
	}
}

func TestWriterErrors(t *testing.T) {
	w := NewWriter(io.Discard)
	if err := w.WriteHeader(&Header{Name: "big", Mode: TypeReg, Size: 1 << 32}); err == nil {
		t.Error("a 4 GiB entry was accepted")
	}
	if err := w.WriteHeader(&Header{Name: "f", Mode: TypeReg, Size: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("abc")); err == nil {
		t.Error("writing past the entry size was accepted")
	}
	if err := w.WriteHeader(&Header{Name: "g", Mode: TypeReg}); err == nil {
		t.Error("a header before the previous data was complete was accepted")
	}
}

func TestReaderErrors(t *testing.T) {
	good := archive(t, sample())
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"bad magic", append([]byte("070707"), good[6:]...)},
		{"bad hex", append(append([]byte{}, good[:14]...), append([]byte("zzzzzzzz"), good[22:]...)...)},
		{"truncated", good[:200]},
		{"no trailer", good[:112+4]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readAll(tc.b)
			if !errors.Is(err, ErrFormat) {
				t.Errorf("err = %v, want ErrFormat", err)
			}
		})
	}
}

// TestGNUCpio extracts an archive with GNU cpio and compares the files.
func TestGNUCpio(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	cpioBin := testenv.Binary(t, "cpio")
	dir := t.TempDir()
	cmd := exec.Command(cpioBin, "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(archive(t, sample()))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, out)
	}
	for _, e := range sample() {
		p := filepath.Join(dir, e.Name)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			t.Errorf("%s: %v", e.Name, err)
			continue
		}
		if st.Mode != e.Mode || st.Uid != e.UID || st.Gid != e.GID {
			t.Errorf("%s: mode %o uid %d gid %d, want %o %d %d", e.Name, st.Mode, st.Uid, st.Gid, e.Mode, e.UID, e.GID)
		}
		switch e.Mode & ModeType {
		case TypeReg:
			d, _ := os.ReadFile(p)
			want := e.Data
			if e.Name == "hl1" {
				want = "linked"
			}
			if string(d) != want {
				t.Errorf("%s: content %q, want %q", e.Name, d, want)
			}
		case TypeSymlink:
			if l, _ := os.Readlink(p); l != e.Linkname {
				t.Errorf("%s: target %q, want %q", e.Name, l, e.Linkname)
			}
		case TypeChar:
			if st.Rdev != uint64(e.RDevMajor<<8|e.RDevMinor) {
				t.Errorf("%s: rdev %#x", e.Name, st.Rdev)
			}
		}
	}
	var a, b syscall.Stat_t
	errA := syscall.Stat(filepath.Join(dir, "hl1"), &a)
	errB := syscall.Stat(filepath.Join(dir, "hl2"), &b)
	if errA != nil || errB != nil || a.Ino != b.Ino {
		t.Error("hl1 and hl2 are not hard links of one file")
	}
}

func FuzzReader(f *testing.F) {
	f.Add(archive(f, sample()))
	f.Add(archive(f, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := readAll(b)
		if err != nil {
			return
		}
		// What was read must write and read back the same.
		var w bytes.Buffer
		cw := NewWriter(&w)
		for _, e := range es {
			h := e.Header
			if err := cw.WriteHeader(&h); err != nil {
				t.Fatalf("rewriting %q: %v", h.Name, err)
			}
			if h.Mode&ModeType != TypeSymlink {
				if _, err := cw.Write([]byte(e.Data)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := cw.Close(); err != nil {
			t.Fatal(err)
		}
		es2, err := readAll(w.Bytes())
		if err != nil {
			t.Fatalf("reading a rewritten archive: %v", err)
		}
		if d := cmp.Diff(es, es2); d != "" {
			t.Fatalf("rewritten archive differs:\n%s", d)
		}
	})
}
