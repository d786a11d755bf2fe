// Package testimage makes small, real container images for tests across the
// project: Busybox (Debian's static busybox with applet symlinks and a
// settable config), images from hand-written layers, and writers to an OCI
// layout directory, an OCI archive and a `docker save` tarball. Images are
// deterministic: the same options give the same digests.
package testimage

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/nitropod/nitropod/internal/testenv"
)

// BusyboxPath is Debian's busybox-static binary.
const BusyboxPath = "/bin/busybox"

// Applets are the busybox applets Busybox links into /bin.
var Applets = []string{
	"cat", "date", "echo", "env", "false", "grep", "head", "hostname", "httpd", "id", "kill",
	"ls", "mkdir", "nc", "printf", "ps", "pwd", "rm", "sh", "sleep", "tail", "test", "touch",
	"true", "uname", "wc", "wget",
}

// Epoch is the mtime of every file and the creation time of every image.
var Epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Option changes an image's config.
type Option func(*v1.Config)

// Entrypoint sets the entrypoint and, as a Dockerfile ENTRYPOINT does,
// clears the command set before it (Busybox's default `sh`); set a command
// after it with Cmd.
func Entrypoint(args ...string) Option {
	return func(c *v1.Config) { c.Entrypoint, c.Cmd = args, nil }
}

// Cmd sets the command.
func Cmd(args ...string) Option { return func(c *v1.Config) { c.Cmd = args } }

// Env appends K=V entries.
func Env(kv ...string) Option { return func(c *v1.Config) { c.Env = append(c.Env, kv...) } }

// WorkingDir sets the working directory.
func WorkingDir(d string) Option { return func(c *v1.Config) { c.WorkingDir = d } }

// User sets the user ("name", "uid", "uid:gid", …).
func User(u string) Option { return func(c *v1.Config) { c.User = u } }

// ExposedPorts declares ports ("80/tcp").
func ExposedPorts(ports ...string) Option {
	return func(c *v1.Config) {
		if c.ExposedPorts == nil {
			c.ExposedPorts = map[string]struct{}{}
		}
		for _, p := range ports {
			c.ExposedPorts[p] = struct{}{}
		}
	}
}

// File is one entry of a layer made by Layer.
type File struct {
	// Name is the path in the layer ("bin/sh"; directories may end in "/").
	Name string
	// Type is a tar type flag (tar.TypeReg when zero).
	Type byte
	// Mode holds the permission bits (with setuid, setgid, sticky).
	Mode int64
	// Data is a regular file's content.
	Data []byte
	// Linkname is a symlink's target or a hard link's target path.
	Linkname string
	UID, GID int
	// Devmajor and Devminor are a device node's numbers.
	Devmajor, Devminor int64
}

// Dir, Reg and Symlink are shorthands for File.
func Dir(name string, mode int64) File { return File{Name: name, Type: tar.TypeDir, Mode: mode} }

// Reg is a regular file.
func Reg(name string, mode int64, data string) File {
	return File{Name: name, Type: tar.TypeReg, Mode: mode, Data: []byte(data)}
}

// Symlink is a symbolic link.
func Symlink(name, target string) File {
	return File{Name: name, Type: tar.TypeSymlink, Mode: 0o777, Linkname: target}
}

// LayerTar returns the uncompressed tar stream of files, in the given order.
func LayerTar(t testing.TB, files ...File) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range files {
		typ := f.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{
			Name: f.Name, Typeflag: typ, Mode: f.Mode, Uid: f.UID, Gid: f.GID, Linkname: f.Linkname,
			ModTime: Epoch, Devmajor: f.Devmajor, Devminor: f.Devminor, Format: tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("testimage: writing layer entry %s: %v", f.Name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Layer makes a gzip-compressed layer of files.
func Layer(t testing.TB, files ...File) v1.Layer {
	t.Helper()
	b := LayerTar(t, files...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatalf("testimage: making layer: %v", err)
	}
	return l
}

// Image makes a linux/amd64 OCI image of layers (base first) with a config
// changed by opts.
func Image(t testing.TB, layers []v1.Layer, opts ...Option) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var adds []mutate.Addendum
	for _, l := range layers {
		adds = append(adds, mutate.Addendum{Layer: l, MediaType: types.OCILayer})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		t.Fatalf("testimage: appending layers: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: Epoch}
	cf.Config.Env = []string{"PATH=/bin"}
	for _, o := range opts {
		o(&cf.Config)
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatalf("testimage: setting config: %v", err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return frozen{img, m}
}

// frozen answers Manifest from the raw manifest (mutate's in-memory one can
// differ from it in empty annotation maps, which validate.Image rejects).
type frozen struct {
	v1.Image
	m *v1.Manifest
}

func (f frozen) Manifest() (*v1.Manifest, error) { return f.m.DeepCopy(), nil }

// BusyboxFiles are the files of Busybox's single layer: /bin/busybox, applet
// symlinks, /etc/passwd (root, nobody, www-data), /etc/group, /tmp, /root,
// /var/www.
func BusyboxFiles(t testing.TB) []File {
	t.Helper()
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		testenv.Missing(t, "%s (apt-get install busybox-static): %v", BusyboxPath, err)
	}
	files := []File{
		Dir("bin/", 0o755),
		{Name: "bin/busybox", Type: tar.TypeReg, Mode: 0o755, Data: bb},
	}
	apps := append([]string{}, Applets...)
	sort.Strings(apps)
	for _, a := range apps {
		files = append(files, Symlink("bin/"+a, "busybox"))
	}
	files = append(files,
		Dir("etc/", 0o755),
		Reg("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
		Reg("etc/group", 0o644, "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n"),
		Reg("etc/hostname", 0o644, "busybox\n"),
		Dir("root/", 0o700),
		File{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		Dir("var/", 0o755),
		Dir("var/www/", 0o755),
		Reg("var/www/index.html", 0o644, "hello from nitropod\n"),
	)
	return files
}

// Busybox returns an image of Debian's static busybox with its applets
// (sh, echo, cat, httpd, sleep, id, pwd, env, …) in /bin, PATH=/bin and the
// command `sh`; opts change the config (Entrypoint drops the `sh`). It needs busybox-static installed.
func Busybox(t testing.TB, opts ...Option) v1.Image {
	t.Helper()
	return Image(t, []v1.Layer{Layer(t, BusyboxFiles(t)...)}, append([]Option{Cmd("sh")}, opts...)...)
}

// WriteOCILayout writes img to a new OCI layout directory under dir and
// returns its path.
func WriteOCILayout(t testing.TB, img v1.Image, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "oci-layout")
	lp, err := layout.Write(p, empty.Index)
	if err != nil {
		t.Fatalf("testimage: writing OCI layout: %v", err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatalf("testimage: writing OCI layout: %v", err)
	}
	return p
}

// WriteDockerTarball writes img as `docker save` does, tagged ref, into dir
// and returns the file's path.
func WriteDockerTarball(t testing.TB, img v1.Image, ref, dir string) string {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatalf("testimage: tag %q: %v", ref, err)
	}
	p := filepath.Join(dir, "image.tar")
	if err := tarball.WriteToFile(p, tag, img); err != nil {
		t.Fatalf("testimage: writing docker tarball: %v", err)
	}
	return p
}

// WriteOCIArchive writes img as an OCI layout inside a tar file (what
// `docker buildx --output type=oci` and `ctr images export` make) into dir
// and returns the file's path.
func WriteOCIArchive(t testing.TB, img v1.Image, dir string) string {
	t.Helper()
	src := WriteOCILayout(t, img, t.TempDir())
	p := filepath.Join(dir, "image-oci.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(src, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil || rel == "." {
			return err
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		h.ModTime = Epoch
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		t.Fatalf("testimage: writing OCI archive: %v", err)
	}
	return p
}
