package images

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func writeTree(t *testing.T, dir string) {
	t.Helper()
	for p, c := range map[string]string{"b/file": "hello", "a": "x", "b/c/d": ""} {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("file", filepath.Join(dir, "b", "link")); err != nil {
		t.Fatal(err)
	}
}

// TestTarDir checks the layer contents: sorted names, directories with a
// slash, symlinks kept, owners and times fixed.
func TestTarDir(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir)
	var buf bytes.Buffer
	if err := TarDir(&buf, dir); err != nil {
		t.Fatal(err)
	}
	var names []string
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) {
			t.Errorf("%s: uid %d gid %d mtime %v; want 0 0 %v", h.Name, h.Uid, h.Gid, h.ModTime, epoch)
		}
		if h.Name == "b/link" && (h.Typeflag != tar.TypeSymlink || h.Linkname != "file") {
			t.Errorf("b/link = type %c -> %q; want a symlink to file", h.Typeflag, h.Linkname)
		}
	}
	want := []string{"a", "b/", "b/c/", "b/c/d", "b/file", "b/link"}
	if diff := cmp.Diff(names, want); diff != "" {
		t.Errorf("entries (-got +want):\n%s", diff)
	}
}

// TestFromDirReproducible checks that one tree gives one digest (so EIF
// cache keys stay stable across runs) and that the config is kept.
func TestFromDirReproducible(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	writeTree(t, a)
	writeTree(t, b)
	cfg := v1.Config{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}}
	ia, err := FromDir(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ib, err := FromDir(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := ia.Digest()
	db, _ := ib.Digest()
	if da != db {
		t.Errorf("digests of identical trees differ: %s, %s", da, db)
	}
	cf, err := ia.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(cf.Config.Cmd, cfg.Cmd); diff != "" || cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("config cmd diff %s, os %s, arch %s; want linux/amd64", diff, cf.OS, cf.Architecture)
	}
}
