package safefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// volume lays out a directory like a kubelet volume next to another Pod's
// volume: a projected-volume style file (token -> ..data/token), and the
// hostile entries a Pod can create in a writable volume.
func volume(t *testing.T) (root, other string) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "pod-a", "vol")
	other = filepath.Join(base, "pod-b", "vol")
	for _, d := range []string{filepath.Join(root, "..2026_01_01"), other, filepath.Join(root, "dir")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "..2026_01_01", "token"), "TOKEN-A")
	write(filepath.Join(root, "plain"), "PLAIN")
	write(filepath.Join(other, "token"), "TOKEN-B")
	write(filepath.Join(root, "big"), strings.Repeat("x", 4097))
	link := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	link("..2026_01_01", "..data")
	link("..data/token", "token")
	link("/dev/zero", "zero")
	link("../../pod-b/vol/token", "escape")
	link(filepath.Join(other, "token"), "absolute")
	link("loop", "loop")
	link("/proc/self/root/etc/hostname", "magic")
	if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	link("fifo", "tofifo")
	return root, other
}

func TestReadBeneath(t *testing.T) {
	for _, mode := range []struct {
		name     string
		fallback bool
	}{{"openat2", false}, {"walk", true}} {
		t.Run(mode.name, func(t *testing.T) {
			forceFallback = mode.fallback
			defer func() { forceFallback = false }()
			root, _ := volume(t)
			for _, tc := range []struct {
				rel  string
				want string // content, or "" for an error
				err  error
				msg  string
			}{
				{rel: "plain", want: "PLAIN"},
				{rel: "/plain", want: "PLAIN"},
				{rel: "token", want: "TOKEN-A"}, // a projected volume's layout
				{rel: "..data/token", want: "TOKEN-A"},
				{rel: "zero", err: ErrEscapes, msg: "outside the volume"},
				{rel: "escape", err: ErrEscapes},
				{rel: "absolute", err: ErrEscapes},
				{rel: "magic", err: ErrEscapes},
				{rel: "../pod-b/vol/token", want: ""}, // cleaned to beneath root: does not exist
				{rel: "fifo", err: ErrNotRegular, msg: "FIFO"},
				{rel: "tofifo", err: ErrNotRegular, msg: "FIFO"},
				{rel: "big", err: ErrTooLarge, msg: "4097 bytes, the limit is 4096"},
				{rel: "dir", msg: "directory"},
				{rel: "loop", msg: "symlink"},
				{rel: "missing", err: fs.ErrNotExist},
				{rel: "plain/x", msg: "not a directory"},
			} {
				t.Run(tc.rel, func(t *testing.T) {
					t0 := time.Now()
					b, err := ReadBeneath(root, tc.rel, 4096)
					if d := time.Since(t0); d > time.Second {
						t.Errorf("took %v", d)
					}
					if tc.want != "" {
						if err != nil || string(b) != tc.want {
							t.Fatalf("ReadBeneath = %q, %v; want %q", b, err, tc.want)
						}
						return
					}
					if err == nil {
						t.Fatalf("ReadBeneath = %q, nil; want an error", b)
					}
					if tc.err != nil && !errors.Is(err, tc.err) {
						t.Errorf("error %q is not %v", err, tc.err)
					}
					if !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), root) {
						t.Errorf("error %q does not name %q and the volume", err, tc.msg)
					}
				})
			}
		})
	}
}

func TestReadBeneathBadRoot(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{f, filepath.Join(f, "nope")} {
		if _, err := ReadBeneath(root, "x", 10); err == nil || !strings.Contains(err.Error(), "opening the volume") {
			t.Errorf("root %s: error %v, want one about the volume", root, err)
		}
	}
	if _, err := ReadBeneath(t.TempDir(), "", 10); !errors.Is(err, ErrNotRegular) {
		t.Errorf("empty rel: %v, want ErrNotRegular", err)
	}
}
