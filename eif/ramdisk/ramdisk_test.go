package ramdisk

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nitropod/nitropod/eif/cpio"
	"github.com/nitropod/nitropod/internal/testenv"
)

// file describes one path of an expected filesystem (and one tar entry).
type file struct {
	Name     string
	Mode     uint32 // cpio mode: type | permissions
	UID, GID uint32
	Data     string // content, or symlink target
	Link     string // hard link target (tar entries); group name (expectations)
	Mtime    int64
}

func tarLayer(t testing.TB, fs []file) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range fs {
		h := &tar.Header{Name: f.Name, Mode: int64(f.Mode & 0o7777), Uid: int(f.UID), Gid: int(f.GID), ModTime: time.Unix(f.Mtime, 0), Format: tar.FormatPAX}
		switch {
		case f.Link != "":
			h.Typeflag, h.Linkname = tar.TypeLink, f.Link
		case f.Mode&cpio.ModeType == cpio.TypeDir:
			h.Typeflag = tar.TypeDir
		case f.Mode&cpio.ModeType == cpio.TypeSymlink:
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Data
		case f.Mode&cpio.ModeType == cpio.TypeFifo:
			h.Typeflag = tar.TypeFifo
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, f.Data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func openers(layers ...[]byte) []Opener {
	var os []Opener
	for _, l := range layers {
		os = append(os, func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l)), nil })
	}
	return os
}

const (
	dir  = cpio.TypeDir
	reg  = cpio.TypeReg
	sym  = cpio.TypeSymlink
	fifo = cpio.TypeFifo
)

// threeLayers is the image of the acceptance criteria: files, deletions by
// whiteout, an opaque directory, a hard link, a symlink, a setuid file and a
// fifo.
func threeLayers(t testing.TB) [][]byte {
	return [][]byte{
		tarLayer(t, []file{
			{Name: "bin/", Mode: dir | 0o755},
			{Name: "bin/app", Mode: reg | 0o755, Data: "app v1", Mtime: 1000},
			{Name: "etc/", Mode: dir | 0o755},
			{Name: "etc/passwd", Mode: reg | 0o644, Data: "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/var/www:/bin/sh\n"},
			{Name: "etc/group", Mode: reg | 0o644, Data: "root:x:0:\nweb:x:44:\nextra:x:55:web\n"},
			{Name: "opt/", Mode: dir | 0o750, UID: 7, GID: 8},
			{Name: "opt/old1", Mode: reg | 0o644, Data: "old1"},
			{Name: "opt/sub/", Mode: dir | 0o755},
			{Name: "opt/sub/old2", Mode: reg | 0o644, Data: "old2"},
			{Name: "gone", Mode: reg | 0o644, Data: "deleted later"},
			{Name: "gonedir/", Mode: dir | 0o755},
			{Name: "gonedir/x", Mode: reg | 0o644, Data: "x"},
		}),
		tarLayer(t, []file{
			{Name: "bin/app", Mode: reg | 0o755, Data: "app v2", Mtime: 2000},
			{Name: "bin/app-link", Link: "bin/app"},
			{Name: "usr/", Mode: dir | 0o755},
			{Name: "usr/bin/", Mode: dir | 0o755},
			{Name: "usr/bin/su", Mode: reg | cpio.ModeSetuid | 0o755, UID: 0, GID: 0, Data: "su"},
			{Name: "run/", Mode: dir | 0o755},
			{Name: "run/ctl", Mode: fifo | 0o620, UID: 33, GID: 44},
			{Name: ".wh.gone", Mode: reg},
		}),
		tarLayer(t, []file{
			{Name: "opt/", Mode: dir | 0o755, UID: 1, GID: 2},
			{Name: "opt/.wh..wh..opq", Mode: reg},
			{Name: "opt/new", Mode: reg | 0o600, UID: 33, GID: 44, Data: "new"},
			{Name: "sh", Mode: sym | 0o777, Data: "/bin/app"},
			{Name: ".wh.gonedir", Mode: reg},
			{Name: "data/", Mode: dir | 0o1777},
			{Name: "data/empty", Mode: reg | 0o644},
		}),
	}
}

// flattened is what threeLayers must become under /rootfs.
func flattened() []file {
	return []file{
		{Name: "", Mode: dir | 0o755},
		{Name: "bin", Mode: dir | 0o755},
		{Name: "bin/app", Mode: reg | 0o755, Data: "app v2", Link: "app", Mtime: 2000},
		{Name: "bin/app-link", Mode: reg | 0o755, Data: "app v2", Link: "app", Mtime: 2000},
		{Name: "data", Mode: dir | 0o1777},
		{Name: "data/empty", Mode: reg | 0o644},
		{Name: "dev", Mode: dir | 0o755},
		{Name: "etc", Mode: dir | 0o755},
		{Name: "etc/group", Mode: reg | 0o644, Data: "root:x:0:\nweb:x:44:\nextra:x:55:web\n"},
		{Name: "etc/passwd", Mode: reg | 0o644, Data: "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/var/www:/bin/sh\n"},
		{Name: "opt", Mode: dir | 0o755, UID: 1, GID: 2},
		{Name: "opt/new", Mode: reg | 0o600, UID: 33, GID: 44, Data: "new"},
		{Name: "proc", Mode: dir | 0o755},
		{Name: "run", Mode: dir | 0o755},
		{Name: "run/ctl", Mode: fifo | 0o620, UID: 33, GID: 44},
		{Name: "sh", Mode: sym | 0o777, Data: "/bin/app"},
		{Name: "sys", Mode: dir | 0o755},
		{Name: "tmp", Mode: dir | 0o1777},
		{Name: "usr", Mode: dir | 0o755},
		{Name: "usr/bin", Mode: dir | 0o755},
		{Name: "usr/bin/su", Mode: reg | cpio.ModeSetuid | 0o755, Data: "su"},
		{Name: "var", Mode: dir | 0o755},
	}
}

var testProc = Process{Args: []string{"/bin/app", "-x"}, Env: []string{"PATH=/bin", "A=b"}, Cwd: "/opt", UID: 33, GID: 44}

func layersRamdisk(t testing.TB, layers [][]byte) []byte {
	t.Helper()
	l, err := ScanLayers(openers(layers...))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := l.Write(&b, testProc); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// readTree reads a ramdisk into the file list of everything under rootfs/
// (the expectation's form), plus the other files by name.
func readTree(t testing.TB, rd []byte) ([]file, map[string]string) {
	t.Helper()
	r := cpio.NewReader(bytes.NewReader(rd))
	var fs []file
	other := map[string]string{}
	inos := map[uint32][]int{}
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		d, _ := io.ReadAll(r)
		if h.Name != RootfsDir && !strings.HasPrefix(h.Name, RootfsDir+"/") {
			other[h.Name] = string(d)
			continue
		}
		f := file{Name: strings.TrimPrefix(strings.TrimPrefix(h.Name, RootfsDir), "/"), Mode: h.Mode, UID: h.UID, GID: h.GID, Data: string(d), Mtime: h.Mtime}
		if h.Mode&cpio.ModeType == cpio.TypeSymlink {
			f.Data = h.Linkname
		}
		if f.Mode&cpio.ModeType != cpio.TypeReg || f.Mode&cpio.ModeType == cpio.TypeReg && f.Mtime == 0 {
			f.Mtime = 0 // the expectation only pins regular files' mtimes where it sets them
		}
		if h.Mode&cpio.ModeType == cpio.TypeReg && h.Nlink > 1 {
			inos[h.Ino] = append(inos[h.Ino], len(fs))
		}
		fs = append(fs, f)
	}
	// Hard link groups: data lives with the last link; name groups by the base of the first.
	for _, idx := range inos {
		data := fs[idx[len(idx)-1]].Data
		group := filepath.Base(fs[idx[0]].Name)
		for _, i := range idx {
			fs[i].Data, fs[i].Link = data, group
		}
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].Name < fs[j].Name })
	return fs, other
}

func TestLayersFlatten(t *testing.T) {
	rd := layersRamdisk(t, threeLayers(t))
	got, other := readTree(t, rd)
	if d := cmp.Diff(flattened(), got); d != "" {
		t.Errorf("flattened tree (-want +got):\n%s", d)
	}
	var p Process
	if err := json.Unmarshal([]byte(other[ProcessPath]), &p); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(testProc, p); d != "" {
		t.Errorf("process.json (-want +got):\n%s", d)
	}
	if other[CmdPath] != "/bin/app\n-x\n" || other[EnvPath] != "PATH=/bin\nA=b\n" {
		t.Errorf("cmd %q env %q", other[CmdPath], other[EnvPath])
	}
	if !bytes.Equal(rd, layersRamdisk(t, threeLayers(t))) {
		t.Error("the same layers gave different ramdisks")
	}
}

func TestLayersFile(t *testing.T) {
	l, err := ScanLayers(openers(threeLayers(t)...))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(l.File("/etc/group")); !strings.Contains(got, "extra:x:55:web") {
		t.Errorf("File(/etc/group) = %q", got)
	}
	if l.File("/bin/app") != nil {
		t.Error("File returned content of a file it should not keep")
	}
}

func TestLayersMalicious(t *testing.T) {
	for _, tc := range []struct {
		name    string
		layers  [][]file
		wantErr error  // nil: accepted
		check   string // a path that must exist (relative to rootfs) when accepted
	}{
		{"dotdot escape", [][]file{{{Name: "../../etc/evil", Mode: reg | 0o644, Data: "x"}}}, ErrUnsafePath, ""},
		{"dotdot hidden in path", [][]file{{{Name: "a/../../evil", Mode: reg | 0o644, Data: "x"}}}, ErrUnsafePath, ""},
		{"dotdot inside root", [][]file{{{Name: "a/b/../c", Mode: reg | 0o644, Data: "x"}}}, nil, "a/c"},
		{"absolute name", [][]file{{{Name: "/etc/abs", Mode: reg | 0o644, Data: "x"}}}, nil, "etc/abs"},
		{"file through symlink", [][]file{{{Name: "etc", Mode: sym | 0o777, Data: "/etc"}, {Name: "etc/passwd", Mode: reg | 0o644, Data: "pwned"}}}, ErrUnsafePath, ""},
		{"file through relative symlink", [][]file{{{Name: "up", Mode: sym | 0o777, Data: "../../.."}, {Name: "up/x", Mode: reg | 0o644, Data: "x"}}}, ErrUnsafePath, ""},
		{"lower symlink replaced by directory", [][]file{
			{{Name: "lib", Mode: sym | 0o777, Data: "/etc"}},
			{{Name: "lib/x", Mode: reg | 0o644, Data: "x"}},
		}, nil, "lib/x"},
		{"hard link escaping", [][]file{{{Name: "l", Link: "../../etc/shadow"}}}, ErrUnsafePath, ""},
		{"hard link to nothing", [][]file{{{Name: "l", Link: "nothing"}}}, errAny, ""},
		{"zero-byte file", [][]file{{{Name: "z", Mode: reg | 0o644}}}, nil, "z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ls [][]byte
			for _, l := range tc.layers {
				ls = append(ls, tarLayer(t, l))
			}
			l, err := ScanLayers(openers(ls...))
			if tc.wantErr != nil {
				var le *LayerError
				if err == nil || !errors.As(err, &le) || (!errors.Is(tc.wantErr, errAny) && !errors.Is(err, tc.wantErr)) {
					t.Fatalf("ScanLayers: err = %v, want a LayerError wrapping %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ScanLayers: %v", err)
			}
			var b bytes.Buffer
			if err := l.Write(&b, testProc); err != nil {
				t.Fatal(err)
			}
			tree, _ := readTree(t, b.Bytes())
			found := false
			for _, f := range tree {
				if strings.Contains(f.Name, "..") {
					t.Errorf("entry %q escapes", f.Name)
				}
				found = found || f.Name == tc.check
			}
			if !found {
				t.Errorf("%s missing from the ramdisk", tc.check)
			}
		})
	}
}

var errAny = errors.New("any error")

// TestLayersHuge uses a sparse 4 GiB file: refused before any data is read.
func TestLayersHuge(t *testing.T) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "huge", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4 << 30}); err != nil {
		t.Fatal(err)
	}
	// The stream ends after the header: a scan that read the data would fail
	// with an unexpected EOF rather than the size error.
	_, err := ScanLayers(openers(b.Bytes()))
	var le *LayerError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), "below 4 GiB") {
		t.Fatalf("ScanLayers: err = %v, want the 4 GiB refusal", err)
	}
}

func TestWriteBootstrap(t *testing.T) {
	d := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	initp := write("init", "INIT")
	mods := []string{write("virtio.ko", "V"), write("nsm.ko", "N")}
	var b bytes.Buffer
	if err := WriteBootstrap(&b, initp, mods); err != nil {
		t.Fatal(err)
	}
	r := cpio.NewReader(&b)
	var got []string
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		got = append(got, fmt.Sprintf("%s %o %s", h.Name, h.Mode, data))
	}
	want := []string{"dev 40755 ", "dev/console 20600 ", "init 100755 INIT", "nitropod 40755 ", "nitropod/modules 40755 ", "nitropod/modules/00-virtio.ko 100644 V", "nitropod/modules/01-nsm.ko 100644 N"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("bootstrap entries (-want +got):\n%s", d)
	}
}

// makeTree creates the flattened expectation as a real directory tree.
func makeTree(t *testing.T, root string, fs []file) {
	t.Helper()
	for _, f := range fs {
		p := filepath.Join(root, f.Name)
		switch f.Mode & cpio.ModeType {
		case dir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case sym:
			if err := os.Symlink(f.Data, p); err != nil {
				t.Fatal(err)
			}
			continue
		case fifo:
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
		case reg:
			if f.Link != "" && f.Name == "bin/app-link" {
				if err := os.Link(filepath.Join(root, "bin/app"), p); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := os.WriteFile(p, []byte(f.Data), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, time.Unix(f.Mtime, 0), time.Unix(f.Mtime, 0)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Lchown(p, int(f.UID), int(f.GID)); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, goMode(f.Mode)); err != nil {
			t.Fatal(err)
		}
	}
}

func goMode(m uint32) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&cpio.ModeSetuid != 0 {
		fm |= os.ModeSetuid
	}
	if m&cpio.ModeSetgid != 0 {
		fm |= os.ModeSetgid
	}
	if m&cpio.ModeSticky != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// TestWriteDir builds the same tree as a directory: the ramdisk must hold it.
func TestWriteDir(t *testing.T) {
	testenv.RequireRoot(t) // owners
	root := filepath.Join(t.TempDir(), "rootfs")
	want := flattened()
	makeTree(t, root, want)
	var b bytes.Buffer
	if err := WriteDir(&b, root, testProc); err != nil {
		t.Fatal(err)
	}
	got, other := readTree(t, b.Bytes())
	for i := range got { // directory mtimes change as the test fills them; the expectation has none
		if got[i].Mode&cpio.ModeType != reg {
			got[i].Mtime = 0
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("tree (-want +got):\n%s", d)
	}
	if other[CmdPath] != "/bin/app\n-x\n" {
		t.Errorf("cmd = %q", other[CmdPath])
	}
	var b2 bytes.Buffer
	if err := WriteDir(&b2, root, testProc); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), b2.Bytes()) {
		t.Error("two runs gave different ramdisks")
	}
}

// TestGNUCpioExtract extracts the three-layer image's ramdisk with GNU cpio
// and compares the result with the flattened filesystem built by hand.
func TestGNUCpioExtract(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	cpioBin := testenv.Binary(t, "cpio")
	rd := layersRamdisk(t, threeLayers(t))
	out := t.TempDir()
	cmd := exec.Command(cpioBin, "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = out
	cmd.Stdin = bytes.NewReader(rd)
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, o)
	}
	want := filepath.Join(t.TempDir(), "want")
	makeTree(t, want, flattened())
	if d := cmp.Diff(snapshot(t, want), snapshot(t, filepath.Join(out, RootfsDir))); d != "" {
		t.Errorf("extracted tree (-want +got):\n%s", d)
	}
}

// snapshot describes a directory tree: type, mode, owner, content or link
// target, mtime of regular files, and which names share an inode.
func snapshot(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	inodes := map[uint64]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		s := fmt.Sprintf("%s mode=%o uid=%d gid=%d", rel, st.Mode, st.Uid, st.Gid)
		switch fi.Mode().Type() {
		case 0:
			d, _ := os.ReadFile(p)
			s += fmt.Sprintf(" data=%q mtime=%d", d, fi.ModTime().Unix())
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					s += " linked-to=" + first
				} else {
					inodes[st.Ino] = rel
				}
			}
		case os.ModeSymlink:
			l, _ := os.Readlink(p)
			s += " target=" + l
		}
		out = append(out, s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLayersOpaqueAfterEntries: a layer may list entries of a directory
// before its opaque marker; they survive, the lower layers' do not.
func TestLayersOpaqueAfterEntries(t *testing.T) {
	rd := layersRamdisk(t, [][]byte{
		tarLayer(t, []file{{Name: "d/sub/old", Mode: reg | 0o644, Data: "old"}, {Name: "d/old2", Mode: reg | 0o644, Data: "old2"}}),
		tarLayer(t, []file{{Name: "d/sub/new", Mode: reg | 0o644, Data: "new"}, {Name: "d/.wh..wh..opq", Mode: reg}}),
	})
	got, _ := readTree(t, rd)
	var names []string
	for _, f := range got {
		if f.Name == "d" || strings.HasPrefix(f.Name, "d/") {
			names = append(names, f.Name)
		}
	}
	if d := cmp.Diff([]string{"d", "d/sub", "d/sub/new"}, names); d != "" {
		t.Errorf("d (-want +got):\n%s", d)
	}
}

// TestLayersHardLinksAcrossLayers: a link to a lower layer's file shares its
// inode; a link whose target is later replaced keeps the old content, as on
// overlayfs.
func TestLayersHardLinksAcrossLayers(t *testing.T) {
	rd := layersRamdisk(t, [][]byte{
		tarLayer(t, []file{{Name: "a", Mode: reg | 0o640, Data: "old a", UID: 5}, {Name: "keep", Mode: reg | 0o644, Data: "keep"}}),
		tarLayer(t, []file{{Name: "b", Link: "a"}, {Name: "keep2", Link: "keep"}}),
		tarLayer(t, []file{{Name: "a", Mode: reg | 0o600, Data: "new a"}}),
	})
	got, _ := readTree(t, rd)
	byName := map[string]file{}
	for _, f := range got {
		byName[f.Name] = f
	}
	for name, want := range map[string]file{
		"a":     {Name: "a", Mode: reg | 0o600, Data: "new a"},
		"b":     {Name: "b", Mode: reg | 0o640, Data: "old a", UID: 5},
		"keep":  {Name: "keep", Mode: reg | 0o644, Data: "keep", Link: "keep"},
		"keep2": {Name: "keep2", Mode: reg | 0o644, Data: "keep", Link: "keep"},
	} {
		if d := cmp.Diff(want, byName[name]); d != "" {
			t.Errorf("%s (-want +got):\n%s", name, d)
		}
	}
}

// TestGNUCpioContained extracts the ramdisk of layers that try to escape
// (absolute names, "..", a symlink to /etc with a file under it in a later
// layer, links pointing out) with GNU cpio: everything must land inside the
// extraction directory and nothing may be written through a link.
func TestGNUCpioContained(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	cpioBin := testenv.Binary(t, "cpio")
	canary := fmt.Sprintf("nitropod-escape-%d", time.Now().UnixNano())
	rd := layersRamdisk(t, [][]byte{
		tarLayer(t, []file{
			{Name: "etc", Mode: sym | 0o777, Data: "/etc"},
			{Name: "up", Mode: sym | 0o777, Data: "../../../../.."},
			{Name: "/abs/" + canary, Mode: reg | 0o644, Data: "abs"},
		}),
		tarLayer(t, []file{
			{Name: "etc/" + canary, Mode: reg | 0o644, Data: "through the symlink?"},
			{Name: "x/../up2/" + canary, Mode: reg | 0o644, Data: "dotdot inside"},
			{Name: "hard", Link: "/abs/" + canary},
		}),
	})
	outer := t.TempDir()
	dest := filepath.Join(outer, "x")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpioBin, "-idm", "--quiet")
	cmd.Dir = dest
	cmd.Stdin = bytes.NewReader(rd)
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, o)
	}
	if _, err := os.Lstat(filepath.Join("/etc", canary)); err == nil {
		os.Remove(filepath.Join("/etc", canary))
		t.Fatal("a file was written to /etc")
	}
	entries, _ := os.ReadDir(outer)
	if len(entries) != 1 {
		t.Errorf("extraction wrote beside its directory: %v", entries)
	}
	root := filepath.Join(dest, RootfsDir)
	for p, want := range map[string]string{
		"etc/" + canary: "through the symlink?", // etc became a directory in the upper layer
		"abs/" + canary: "abs",
		"up2/" + canary: "dotdot inside",
		"hard":          "abs",
	} {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", p, b, err, want)
		}
		if fi, err := os.Lstat(filepath.Join(root, filepath.Dir(p))); err != nil || !fi.IsDir() {
			t.Errorf("%s: parent is not a real directory", p)
		}
	}
	if l, err := os.Readlink(filepath.Join(root, "up")); err != nil || l != "../../../../.." {
		t.Errorf("up: %q, %v", l, err)
	}
}

// TestMultiLineProcess: a multi-line script or an env value with newlines
// (a PEM certificate) is kept whole in process.json, which init reads; the
// one-per-line parity files are left out. NUL bytes are refused by name.
func TestMultiLineProcess(t *testing.T) {
	root := t.TempDir()
	proc := Process{Args: []string{"sh", "-c", "echo one\necho two\n"}, Env: []string{"CERT=-----BEGIN-----\nabc\n-----END-----"}}
	var b bytes.Buffer
	if err := WriteDir(&b, root, proc); err != nil {
		t.Fatal(err)
	}
	_, other := readTree(t, b.Bytes())
	if _, ok := other[CmdPath]; ok {
		t.Errorf("/cmd written for a multi-line argv: %q", other[CmdPath])
	}
	if _, ok := other[EnvPath]; ok {
		t.Errorf("/env written for a multi-line env value: %q", other[EnvPath])
	}
	var got Process
	if err := json.Unmarshal([]byte(other[ProcessPath]), &got); err != nil {
		t.Fatalf("process.json %q: %v", other[ProcessPath], err)
	}
	if d := cmp.Diff(proc, got); d != "" {
		t.Errorf("process.json (-want +got):\n%s", d)
	}
	for _, bad := range []Process{
		{Args: []string{"sh", "a\x00b"}},
		{Args: []string{"sh"}, Env: []string{"A=b\x00c"}},
		{Args: []string{"sh"}, Env: []string{"=value"}},
	} {
		err := WriteDir(io.Discard, root, bad)
		if err == nil || !strings.Contains(err.Error(), "NUL") {
			t.Errorf("WriteDir(%q, %q): %v, want an error about NUL bytes / NAME=value", bad.Args, bad.Env, err)
		}
	}
}
