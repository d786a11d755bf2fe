package build

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

// TestFromImageGNUCpio builds an EIF from a three-layer image (files,
// whiteouts, an opaque directory, a hard link, a symlink, a setuid file, a
// fifo, a device node) and extracts its customer ramdisk with GNU cpio: the
// result must be exactly the flattened filesystem.
func TestFromImageGNUCpio(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	cpioBin := testenv.Binary(t, "cpio")
	img := testimage.Image(t, []v1.Layer{
		testimage.Layer(t,
			testimage.Dir("app/", 0o755),
			testimage.Reg("app/main", 0o755, "v1"),
			testimage.Reg("app/config", 0o644, "old config"),
			testimage.Dir("cache/", 0o755),
			testimage.Reg("cache/a", 0o644, "a"),
			testimage.Dir("cache/sub/", 0o755),
			testimage.Reg("cache/sub/b", 0o644, "b"),
			testimage.File{Name: "dev/", Type: tar.TypeDir, Mode: 0o755},
			testimage.File{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		),
		testimage.Layer(t,
			testimage.Reg("app/main", 0o755, "v2"),
			testimage.File{Name: "app/main-hard", Type: tar.TypeLink, Linkname: "app/main"},
			testimage.Reg("app/.wh.config", 0, ""),
			testimage.File{Name: "usr/bin/", Type: tar.TypeDir, Mode: 0o755},
			testimage.File{Name: "usr/bin/priv", Type: tar.TypeReg, Mode: 0o4755, Data: []byte("setuid"), UID: 0, GID: 0},
			testimage.File{Name: "run/ctl", Type: tar.TypeFifo, Mode: 0o620, UID: 33, GID: 33},
		),
		testimage.Layer(t,
			testimage.File{Name: "cache/", Type: tar.TypeDir, Mode: 0o700, UID: 33, GID: 33},
			testimage.Reg("cache/.wh..wh..opq", 0, ""),
			testimage.File{Name: "cache/fresh", Type: tar.TypeReg, Mode: 0o600, UID: 33, GID: 33, Data: []byte("fresh")},
			testimage.Symlink("app/current", "main"),
		),
	}, testimage.Cmd("/app/main"))
	blobs, initPath := fakeBlobs(t, false)
	b, _ := buildImage(t, img, Overrides{}, Options{Blobs: blobs, Init: initPath, BuildTime: time.Unix(0, 0)})
	_, secs := sections(t, b)
	out := t.TempDir()
	cmd := exec.Command(cpioBin, "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = out
	cmd.Stdin = bytes.NewReader(secs[3][1]) // the customer ramdisk
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, o)
	}
	want := []string{
		". dir 755 0:0",
		"app dir 755 0:0",
		"app/current symlink 777 0:0 -> main",
		`app/main file 755 0:0 "v2" links=2`,
		`app/main-hard file 755 0:0 "v2" links=2`,
		"cache dir 700 33:33",
		`cache/fresh file 600 33:33 "fresh" links=1`,
		"dev dir 755 0:0",
		"dev/null chardev 666 0:0 1:3",
		"proc dir 755 0:0",
		"run dir 755 0:0",
		"run/ctl fifo 620 33:33",
		"sys dir 755 0:0",
		"tmp dir 1777 0:0",
		"usr dir 755 0:0",
		"usr/bin dir 755 0:0",
		`usr/bin/priv file 4755 0:0 "setuid" links=1`,
		"var dir 755 0:0",
	}
	if d := cmp.Diff(want, describeTree(t, filepath.Join(out, ramdisk.RootfsDir))); d != "" {
		t.Errorf("extracted rootfs (-want +got):\n%s", d)
	}
	var a, h syscall.Stat_t
	errA := syscall.Stat(filepath.Join(out, "rootfs/app/main"), &a)
	errH := syscall.Stat(filepath.Join(out, "rootfs/app/main-hard"), &h)
	if errA != nil || errH != nil || a.Ino != h.Ino {
		t.Error("app/main and app/main-hard are not one inode")
	}
}

func describeTree(t *testing.T, root string) []string {
	var out []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		perm := st.Mode & 0o7777
		own := fmt.Sprintf("%d:%d", st.Uid, st.Gid)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
			out = append(out, fmt.Sprintf("%s dir %o %s", rel, perm, own))
		case syscall.S_IFLNK:
			l, _ := os.Readlink(p)
			out = append(out, fmt.Sprintf("%s symlink %o %s -> %s", rel, perm, own, l))
		case syscall.S_IFREG:
			d, _ := os.ReadFile(p)
			out = append(out, fmt.Sprintf("%s file %o %s %q links=%d", rel, perm, own, d, st.Nlink))
		case syscall.S_IFIFO:
			out = append(out, fmt.Sprintf("%s fifo %o %s", rel, perm, own))
		case syscall.S_IFCHR:
			out = append(out, fmt.Sprintf("%s chardev %o %s %d:%d", rel, perm, own, st.Rdev>>8, st.Rdev&0xff))
		default:
			out = append(out, fmt.Sprintf("%s other %o", rel, st.Mode))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}
