package ramdisk

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/nitropod/nitropod/eif/cpio"
)

// FuzzScanLayers feeds an arbitrary tar stream as the top layer over a
// normal base: scanning and writing must fail cleanly or give a ramdisk
// whose every name stays under rootfs/ and that the cpio reader accepts.
func FuzzScanLayers(f *testing.F) {
	for _, l := range threeLayers(f) {
		f.Add(l)
	}
	f.Add(tarLayer(f, []file{{Name: "../x", Mode: reg}, {Name: "a", Mode: sym, Data: "/etc"}, {Name: "a/b", Mode: reg}}))
	f.Add(tarLayer(f, []file{{Name: "l", Link: "etc/passwd"}, {Name: "etc/.wh.passwd", Mode: reg}, {Name: ".wh..wh..opq", Mode: reg}}))
	base := threeLayers(f)[0]
	f.Fuzz(func(t *testing.T, top []byte) {
		l, err := ScanLayers(openers(base, top))
		if err != nil {
			return
		}
		// Sparse entries can expand a few bytes of input into gigabytes:
		// bound what the harness keeps in memory.
		b := &limitedBuffer{max: 32 << 20}
		if err := l.Write(b, testProc); err != nil {
			return
		}
		r := cpio.NewReader(&b.Buffer)
		symlinks := map[string]bool{}
		for {
			h, err := r.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				t.Fatalf("the ramdisk does not read back: %v", err)
			}
			n := h.Name
			if strings.HasPrefix(n, "/") || strings.Contains("/"+n+"/", "/../") {
				t.Fatalf("entry %q escapes", n)
			}
			for p := n; strings.Contains(p, "/"); {
				p = p[:strings.LastIndex(p, "/")]
				if symlinks[p] {
					t.Fatalf("entry %q lies under symlink %q", n, p)
				}
			}
			if h.Mode&cpio.ModeType == cpio.TypeSymlink {
				symlinks[n] = true
			}
			if n != RootfsDir && !strings.HasPrefix(n, RootfsDir+"/") && n != CmdPath && n != EnvPath && n != ProcessPath && n != "nitropod" {
				t.Fatalf("entry %q outside rootfs/", n)
			}
		}
	})
}

type limitedBuffer struct {
	bytes.Buffer
	max int
}

var errTooBig = errors.New("output too large for the fuzz harness")

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, errTooBig
	}
	return b.Buffer.Write(p)
}
