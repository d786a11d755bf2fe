// Package source opens the container images nitropod builds EIFs from, as
// go-containerregistry v1.Images: an OCI image layout directory, an OCI
// archive (a layout in a tar file) or a `docker save` tarball, and a
// registry reference. Layers are read lazily, straight from the file or the
// registry, when the builder streams them.
package source

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Options select an image among several.
type Options struct {
	// Platform picks an image from a multi-platform index (default
	// linux/<GOARCH>).
	Platform *v1.Platform
	// Ref picks an image by its org.opencontainers.image.ref.name
	// annotation (layouts and OCI archives) or its tag (docker tarballs).
	Ref string
}

func (o Options) platform() v1.Platform {
	if o.Platform != nil {
		return *o.Platform
	}
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

const refNameAnnotation = "org.opencontainers.image.ref.name"

// FromLayout opens an image in an OCI image layout directory.
func FromLayout(dir string, opts Options) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("opening OCI layout %s: %w", dir, err)
	}
	img, err := pick(idx, opts)
	if err != nil {
		return nil, fmt.Errorf("opening OCI layout %s: %w", dir, err)
	}
	return img, nil
}

// pick chooses an image from an index: by ref name when asked, then by
// platform (descending into nested indexes); a lone image is taken as is.
func pick(idx v1.ImageIndex, opts Options) (v1.Image, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	descs := m.Manifests
	if opts.Ref != "" {
		var sel []v1.Descriptor
		for _, d := range descs {
			if d.Annotations[refNameAnnotation] == opts.Ref {
				sel = append(sel, d)
			}
		}
		if len(sel) == 0 {
			return nil, fmt.Errorf("no image named %q (annotation %s)", opts.Ref, refNameAnnotation)
		}
		descs = sel
	}
	want := opts.platform()
	var candidates []v1.Descriptor
	for _, d := range descs {
		if d.Platform != nil && !d.Platform.Satisfies(want) {
			continue
		}
		candidates = append(candidates, d)
	}
	if len(candidates) == 0 {
		return nil, fmt.Errorf("no image for platform %s", want.String())
	}
	if len(candidates) > 1 && opts.Ref == "" {
		var withPlatform []v1.Descriptor
		for _, d := range candidates {
			if d.Platform != nil {
				withPlatform = append(withPlatform, d)
			}
		}
		if len(withPlatform) == 1 {
			candidates = withPlatform
		} else {
			return nil, fmt.Errorf("%d images match; choose one with a ref name", len(candidates))
		}
	}
	d := candidates[0]
	switch {
	case d.MediaType.IsImage():
		return idx.Image(d.Digest)
	case d.MediaType.IsIndex():
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, err
		}
		return pick(child, Options{Platform: opts.Platform})
	}
	return nil, fmt.Errorf("descriptor %s has media type %s, neither an image nor an index", d.Digest, d.MediaType)
}

// FromTarball opens an image from a tar file: a `docker save` archive
// (manifest.json) or an OCI archive (oci-layout and index.json).
func FromTarball(file string, opts Options) (v1.Image, error) {
	names, err := tarNames(file, "manifest.json", "oci-layout", "index.json")
	if err != nil {
		return nil, fmt.Errorf("opening image archive %s: %w", file, err)
	}
	switch {
	case names["oci-layout"] && names["index.json"]:
		a := &archive{file: file}
		idx, err := a.index()
		if err != nil {
			return nil, fmt.Errorf("opening OCI archive %s: %w", file, err)
		}
		img, err := pick(idx, opts)
		if err != nil {
			return nil, fmt.Errorf("opening OCI archive %s: %w", file, err)
		}
		return img, nil
	case names["manifest.json"]:
		var tag *name.Tag
		if opts.Ref != "" {
			t, err := name.NewTag(opts.Ref)
			if err != nil {
				return nil, fmt.Errorf("opening docker archive %s: %w", file, err)
			}
			tag = &t
		}
		img, err := tarball.ImageFromPath(file, tag)
		if err != nil {
			return nil, fmt.Errorf("opening docker archive %s: %w", file, err)
		}
		return img, nil
	}
	return nil, fmt.Errorf("opening image archive %s: neither a docker save archive (manifest.json) nor an OCI archive (oci-layout, index.json)", file)
}

// FromRegistry opens an image by reference ("registry/repo:tag" or
// "@sha256:…"); an index resolves to opts' platform. Loopback and .local
// registries are spoken to over plain HTTP, others over HTTPS.
func FromRegistry(ref string, opts Options, ropts ...remote.Option) (v1.Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("parsing image reference %q: %w", ref, err)
	}
	img, err := remote.Image(r, append([]remote.Option{remote.WithPlatform(opts.platform())}, ropts...)...)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}
	return img, nil
}

func tarNames(file string, want ...string) (map[string]bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	found := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return found, nil
		}
		if err != nil {
			return nil, err
		}
		n := path.Clean(h.Name)
		for _, w := range want {
			if n == w {
				found[w] = true
			}
		}
	}
}

// archive reads an OCI layout stored in a tar file; each blob is found by
// scanning the file (as go-containerregistry's tarball package does), so
// nothing is extracted or held in memory.
type archive struct{ file string }

type tarEntry struct {
	io.Reader
	f *os.File
}

func (e tarEntry) Close() error { return e.f.Close() }

var errNotFound = errors.New("not in the archive")

func (a *archive) open(name string) (io.ReadCloser, int64, error) {
	f, err := os.Open(a.file)
	if err != nil {
		return nil, 0, err
	}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			f.Close()
			return nil, 0, fmt.Errorf("%s: %w", name, errNotFound)
		}
		if err != nil {
			f.Close()
			return nil, 0, err
		}
		if path.Clean(h.Name) == name && h.Typeflag == tar.TypeReg {
			return tarEntry{tr, f}, h.Size, nil
		}
	}
}

const maxJSON = 4 << 20

func (a *archive) readSmall(name string) ([]byte, error) {
	rc, size, err := a.open(name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > maxJSON {
		return nil, fmt.Errorf("%s is %d bytes, too large for a manifest", name, size)
	}
	return io.ReadAll(rc)
}

func blobName(h v1.Hash) string { return path.Join("blobs", h.Algorithm, h.Hex) }

func (a *archive) blob(h v1.Hash) ([]byte, error) {
	b, err := a.readSmall(blobName(h))
	if err != nil {
		return nil, err
	}
	got, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if h.Algorithm == "sha256" && got != h {
		return nil, fmt.Errorf("blob %s has digest %s", h, got)
	}
	return b, nil
}

func (a *archive) index() (v1.ImageIndex, error) {
	b, err := a.readSmall("index.json")
	if err != nil {
		return nil, err
	}
	return a.indexFrom(b)
}

func (a *archive) indexFrom(raw []byte) (v1.ImageIndex, error) {
	m, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parsing index: %w", err)
	}
	return &archiveIndex{a: a, raw: raw, m: m}, nil
}

// archiveIndex is the v1.ImageIndex of an OCI archive.
type archiveIndex struct {
	a   *archive
	raw []byte
	m   *v1.IndexManifest
}

func (x *archiveIndex) MediaType() (types.MediaType, error) {
	if x.m.MediaType != "" {
		return x.m.MediaType, nil
	}
	return types.OCIImageIndex, nil
}
func (x *archiveIndex) Digest() (v1.Hash, error)                  { return partial.Digest(x) }
func (x *archiveIndex) Size() (int64, error)                      { return int64(len(x.raw)), nil }
func (x *archiveIndex) IndexManifest() (*v1.IndexManifest, error) { return x.m.DeepCopy(), nil }
func (x *archiveIndex) RawManifest() ([]byte, error)              { return x.raw, nil }

func (x *archiveIndex) Image(h v1.Hash) (v1.Image, error) {
	raw, err := x.a.blob(h)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parsing manifest %s: %w", h, err)
	}
	return partial.CompressedToImage(&archiveImage{a: x.a, raw: raw, m: m})
}

func (x *archiveIndex) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	raw, err := x.a.blob(h)
	if err != nil {
		return nil, err
	}
	return x.a.indexFrom(raw)
}

// archiveImage is partial.CompressedImageCore for an image in an OCI archive.
type archiveImage struct {
	a   *archive
	raw []byte
	m   *v1.Manifest
}

func (i *archiveImage) RawConfigFile() ([]byte, error) { return i.a.blob(i.m.Config.Digest) }
func (i *archiveImage) RawManifest() ([]byte, error)   { return i.raw, nil }
func (i *archiveImage) MediaType() (types.MediaType, error) {
	if i.m.MediaType != "" {
		return i.m.MediaType, nil
	}
	return types.OCIManifestSchema1, nil
}

func (i *archiveImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, d := range i.m.Layers {
		if d.Digest == h {
			return &archiveLayer{a: i.a, d: d}, nil
		}
	}
	if i.m.Config.Digest == h {
		return &archiveLayer{a: i.a, d: i.m.Config}, nil
	}
	return nil, fmt.Errorf("layer %s is not in the manifest", h)
}

type archiveLayer struct {
	a *archive
	d v1.Descriptor
}

func (l *archiveLayer) Digest() (v1.Hash, error)            { return l.d.Digest, nil }
func (l *archiveLayer) Size() (int64, error)                { return l.d.Size, nil }
func (l *archiveLayer) MediaType() (types.MediaType, error) { return l.d.MediaType, nil }
func (l *archiveLayer) Compressed() (io.ReadCloser, error) {
	rc, _, err := l.a.open(blobName(l.d.Digest))
	return rc, err
}

// Describe is a one-line description of an image for messages.
func Describe(img v1.Image) string {
	d, err := img.Digest()
	if err != nil {
		return "image"
	}
	return d.String()
}
