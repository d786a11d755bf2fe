package shim_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/eif/s3"
	"github.com/nitropod/nitropod/eif/s3/s3test"
	"github.com/nitropod/nitropod/internal/ctrtest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/images"
)

// TestImageLocation boots a prebuilt EIF from an S3-compatible store
// (versitygw on loopback) named by nitro.k8s.anjuna.io/imageLocation: the
// container image and command are ignored, the EIF's process runs.
func TestImageLocation(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	srv := s3test.Start(t)
	srv.CreateBucket(t, "eifs")
	e := newEnvOpts(t, ctrtest.Options{Env: []string{
		"AWS_ACCESS_KEY_ID=" + s3test.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s3test.SecretKey,
	}})
	e.Configure(t, "[s3]\nendpoint = \""+srv.Endpoint+"\"\nnode_identity_buckets = [\"eifs\"]")

	// A prebuilt EIF whose process differs from the container's command.
	rootfs := t.TempDir()
	if err := images.BusyboxRootfs(testenv.Binary(t, "busybox"), rootfs); err != nil {
		t.Fatal(err)
	}
	eifPath := filepath.Join(t.TempDir(), "prebuilt.eif")
	f, err := os.Create(eifPath)
	if err != nil {
		t.Fatal(err)
	}
	_, err = build.FromRootfs(f, rootfs, ramdisk.Process{
		Args: []string{"sh", "-c", "echo from-the-prebuilt-eif; exit 4"},
		Env:  []string{"PATH=/bin"},
	}, build.Options{Blobs: e.Blobs, Init: e.InitPath})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, err := s3.New(ctx, s3.Config{Endpoint: srv.Endpoint, Credentials: s3test.Credentials()})
	if err != nil {
		t.Fatal(err)
	}
	loc := s3.Location{Bucket: "eifs", Key: "apps/prebuilt.eif"}
	if _, _, err := cl.Push(ctx, eifPath, loc); err != nil {
		t.Fatal(err)
	}

	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	for i, id := range []string{"s3a", "s3b"} {
		out, err := e.run(ctx, []string{"--annotation", nitropod.ImageLocationAnnotation + "=" + loc.String()},
			busyboxRef, id, "sh", "-c", "echo the-image-command-ran").CombinedOutput()
		if code := exitCode(err); code != 4 {
			t.Fatalf("%s: exit code %d (%v), want 4 (the prebuilt EIF's); output:\n%s", id, code, err, out)
		}
		if !strings.Contains(string(out), "from-the-prebuilt-eif") || strings.Contains(string(out), "the-image-command-ran") {
			t.Errorf("%s: output %q, want the prebuilt EIF's process only", id, out)
		}
		if hit, _, _ := e.createInfo(t, id); hit != (i == 1) {
			t.Errorf("%s: cache hit %v, want %v (downloaded once)", id, hit, i == 1)
		}
	}
}
