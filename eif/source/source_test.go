package source

import (
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/internal/testimage"
)

// buildMeasurements builds an EIF from img with a fake blob set and returns
// its measurements.
func buildMeasurements(t *testing.T, img v1.Image) eif.Measurements {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "bzImage"), []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "cmdline"), []byte("console=ttyS0"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "init"), []byte("init"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(d, "out.eif"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := build.FromImage(f, img, build.Overrides{}, build.Options{Blobs: d, Init: filepath.Join(d, "init"), BuildTime: time.Unix(0, 0)})
	if err != nil {
		t.Fatalf("building: %v", err)
	}
	return m
}

// TestSourcesAgree opens one image through every source: each must give the
// same config, layers and EIF measurements.
func TestSourcesAgree(t *testing.T) {
	img := testimage.Image(t, []v1.Layer{
		testimage.Layer(t, testimage.Dir("bin/", 0o755), testimage.Reg("bin/app", 0o755, "app"), testimage.Reg("etc/passwd", 0o644, "root:x:0:0::/:/bin/sh\napp:x:7:8::/:/bin/sh\n")),
		testimage.Layer(t, testimage.Reg(".wh.etc", 0, ""), testimage.Reg("data", 0o600, "data")),
	}, testimage.Cmd("/bin/app"), testimage.User("7"))
	want := buildMeasurements(t, img)
	wantCfg, _ := img.ConfigName()

	dir := t.TempDir()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/test/app:v1"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("pushing to the test registry: %v", err)
	}

	for _, tc := range []struct {
		name string
		open func() (v1.Image, error)
	}{
		{"oci layout", func() (v1.Image, error) { return FromLayout(testimage.WriteOCILayout(t, img, dir), Options{}) }},
		{"oci archive", func() (v1.Image, error) { return FromTarball(testimage.WriteOCIArchive(t, img, dir), Options{}) }},
		{"docker tarball", func() (v1.Image, error) {
			return FromTarball(testimage.WriteDockerTarball(t, img, "example.com/app:v1", dir), Options{})
		}},
		{"docker tarball by tag", func() (v1.Image, error) {
			return FromTarball(testimage.WriteDockerTarball(t, img, "example.com/app:v1", t.TempDir()), Options{Ref: "example.com/app:v1"})
		}},
		{"registry", func() (v1.Image, error) { return FromRegistry(ref, Options{}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.open()
			if err != nil {
				t.Fatal(err)
			}
			if cfg, _ := got.ConfigName(); cfg != wantCfg {
				t.Errorf("config digest %s, want %s", cfg, wantCfg)
			}
			if m := buildMeasurements(t, got); m != want {
				t.Errorf("measurements %+v, want %+v", m, want)
			}
		})
	}
}

func TestLayoutSelection(t *testing.T) {
	a := testimage.Image(t, []v1.Layer{testimage.Layer(t, testimage.Reg("a", 0o644, "a"))}, testimage.Cmd("a"))
	b := testimage.Image(t, []v1.Layer{testimage.Layer(t, testimage.Reg("b", 0o644, "b"))}, testimage.Cmd("b"))
	dir := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for n, img := range map[string]v1.Image{"a": a, "b": b} {
		if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: n})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := FromLayout(dir, Options{}); err == nil || !strings.Contains(err.Error(), "ref name") {
		t.Errorf("ambiguous layout: err = %v", err)
	}
	got, err := FromLayout(dir, Options{Ref: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if gd, _ := got.Digest(); gd != must(b.Digest()) {
		t.Errorf("picked %s, want b", gd)
	}
	if _, err := FromLayout(dir, Options{Ref: "c"}); err == nil {
		t.Error("a missing ref name was accepted")
	}
	// A multi-platform index picks the platform.
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: a, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: b, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	dir2 := filepath.Join(t.TempDir(), "layout")
	lp2, _ := layout.Write(dir2, empty.Index)
	if err := lp2.AppendIndex(idx); err != nil {
		t.Fatal(err)
	}
	got, err = FromLayout(dir2, Options{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}})
	if err != nil {
		t.Fatal(err)
	}
	if gd, _ := got.Digest(); gd != must(b.Digest()) {
		t.Errorf("platform pick %s, want the amd64 image", gd)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestFromTarballErrors(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.tar")
	if err := os.WriteFile(p, testimage.LayerTar(t, testimage.Reg("hello", 0o644, "x")), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := FromTarball(p, Options{}); err == nil || !strings.Contains(err.Error(), "neither") {
		t.Errorf("err = %v", err)
	}
	if _, err := FromRegistry("UPPER/case", Options{}); err == nil {
		t.Error("bad reference accepted")
	}
}
