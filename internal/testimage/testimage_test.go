package testimage

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func TestBusybox(t *testing.T) {
	img := Busybox(t, Entrypoint("httpd", "-f"), User("www-data"), ExposedPorts("80/tcp"), WorkingDir("/var/www"), Env("A=1"))
	if err := validate.Image(img); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "www-data" || c.WorkingDir != "/var/www" || len(c.Entrypoint) != 2 || len(c.Env) != 2 {
		t.Errorf("config = %+v", c)
	}
	d1, _ := img.Digest()
	d2, _ := Busybox(t, Entrypoint("httpd", "-f"), User("www-data"), ExposedPorts("80/tcp"), WorkingDir("/var/www"), Env("A=1")).Digest()
	if d1 != d2 {
		t.Errorf("same options, different digests: %s %s", d1, d2)
	}

	dir := t.TempDir()
	idx, err := layout.ImageIndexFromPath(WriteOCILayout(t, img, dir))
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil || len(m.Manifests) != 1 || m.Manifests[0].Digest != d1 {
		t.Fatalf("layout index: %+v, %v", m, err)
	}
	timg, err := tarball.ImageFromPath(WriteDockerTarball(t, img, "example.com/busybox:test", dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(timg); err != nil {
		t.Errorf("docker tarball image invalid: %v", err)
	}
	WriteOCIArchive(t, img, dir)
}
