package s3_test

// Prebuilt EIFs through the real shim: a private containerd (ctrtest), the
// nitro shim, the launcher and an emulated enclave under QEMU, with
// versitygw on loopback as the S3 store. The EIF is pushed with the
// `nitropod eif push` CLI and runs a different program than the container
// image, so the output proves which one booted.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/eif/s3/s3test"
	"github.com/nitropod/nitropod/internal/ctrtest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/images"
)

const (
	shimNS     = "s3test"
	busyboxRef = "docker.io/library/busybox:latest"
)

func goBuild(t *testing.T, dir string, pkgs ...string) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = testenv.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

// buildEIF builds a bootable EIF from a busybox rootfs that runs script.
func buildEIF(t *testing.T, path, blobs, initBin, script string, signer *eif.Signer) eif.Measurements {
	t.Helper()
	rootfs := t.TempDir()
	if err := images.BusyboxRootfs(testenv.Binary(t, "busybox"), rootfs); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := build.FromRootfs(f, rootfs, ramdisk.Process{Args: []string{"sh", "-c", script}, Env: []string{"PATH=/bin"}},
		build.Options{Blobs: blobs, Init: initBin, Name: "prebuilt", BuildTime: time.Unix(0, 0).UTC(), Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPrebuiltEIFThroughShim(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireRoot(t)
	testenv.Binary(t, "qemu-system-x86_64")
	blobs := testenv.EmuBlobs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	srv := s3test.Start(t)
	srv.CreateBucket(t, "releases")
	bin := t.TempDir()
	goBuild(t, bin, "./cmd/containerd-shim-nitro-v1", "./cmd/nitropod-launcher", "./cmd/nitropod-init", "./cmd/nitropod")
	initBin := filepath.Join(bin, "nitropod-init")

	dir := t.TempDir()
	cacheDir := filepath.Join(dir, "cache")
	runDir, err := os.MkdirTemp("/run", "nps3")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	cfgPath := filepath.Join(dir, "shim.toml")
	cfg := fmt.Sprintf(`backend = "qemu"
blobs_dir = %q
init_path = %q
cache_dir = %q
run_dir = %q
default_cpus = 1
default_memory_mib = 256
[qemu]
accel = "tcg"
[s3]
endpoint = %q
`, blobs, initBin, cacheDir, runDir, srv.Endpoint)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	awsEnv := []string{"AWS_ACCESS_KEY_ID=" + s3test.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3test.SecretKey, "AWS_REGION=us-east-1",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}
	ctrd := ctrtest.Start(t, ctrtest.Options{PathDirs: []string{bin}, Env: append([]string{"NITROPOD_SHIM_CONFIG=" + cfgPath}, awsEnv...)})
	img, err := images.Busybox(testenv.Binary(t, "busybox"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := ctrd.Import(ctx, shimNS, busyboxRef, img); err != nil {
		t.Fatal(err)
	}

	push := func(t *testing.T, file, url string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "nitropod"), "eif", "push", file, url, "--endpoint", srv.Endpoint)
		cmd.Env = append(os.Environ(), awsEnv...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nitropod eif push: %v\n%s", err, out)
		}
		var res struct{ ETag string }
		if err := json.Unmarshal(out, &res); err != nil || res.ETag == "" {
			t.Fatalf("nitropod eif push printed %s", out)
		}
	}
	run := func(id string, annotations ...string) (string, error) {
		args := []string{"run", "--rm", "--runtime", nitropod.RuntimeType}
		for _, a := range annotations {
			args = append(args, "--annotation", a)
		}
		args = append(args, busyboxRef, id, "sh", "-c", "echo from the container image")
		return ctrd.Ctr(ctx, shimNS, args...)
	}
	cacheState := func() map[string]uint64 { // entry file → inode
		m := map[string]uint64{}
		files, _ := filepath.Glob(filepath.Join(cacheDir, "*.eif"))
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil {
				m[filepath.Base(f)] = fi.Sys().(*syscall.Stat_t).Ino
			}
		}
		return m
	}

	signer := s3test.Signer(t)
	v1 := filepath.Join(dir, "v1.eif")
	m1 := buildEIF(t, v1, blobs, initBin, "echo from the prebuilt eif v1", signer)
	push(t, v1, "s3://releases/app.eif")
	loc := nitropod.ImageLocationAnnotation + "=s3://releases/app.eif"
	pins := []string{loc, nitropod.ExpectedPCR0Annotation + "=" + m1.PCR0, nitropod.ExpectedPCR8Annotation + "=" + m1.PCR8}

	var first map[string]uint64
	t.Run("the prebuilt signed EIF boots instead of the image", func(t *testing.T) {
		out, err := run("s3-1", pins...)
		if err != nil || !strings.Contains(out, "from the prebuilt eif v1") || strings.Contains(out, "from the container image") {
			t.Fatalf("ctr run: %v\n%s", err, out)
		}
		first = cacheState()
		if len(first) != 1 {
			t.Fatalf("cache holds %v, want one entry", first)
		}
	})
	t.Run("second start is a cache hit", func(t *testing.T) {
		out, err := run("s3-2", pins...)
		if err != nil || !strings.Contains(out, "from the prebuilt eif v1") {
			t.Fatalf("ctr run: %v\n%s", err, out)
		}
		if got := cacheState(); fmt.Sprint(got) != fmt.Sprint(first) {
			t.Errorf("cache changed on the second start: %v, before %v (a new download)", got, first)
		}
	})
	t.Run("a replaced object is downloaded again", func(t *testing.T) {
		v2 := filepath.Join(dir, "v2.eif")
		buildEIF(t, v2, blobs, initBin, "echo from the prebuilt eif v2", nil)
		push(t, v2, "s3://releases/app.eif")
		out, err := run("s3-3", loc)
		if err != nil || !strings.Contains(out, "from the prebuilt eif v2") {
			t.Fatalf("ctr run: %v\n%s", err, out)
		}
		if got := cacheState(); len(got) != 2 {
			t.Errorf("cache holds %v, want the old and the new entry", got)
		}
	})
	refusals := []struct {
		name string
		ann  []string
		want []string
	}{
		{"expected PCR0 mismatch", []string{loc, nitropod.ExpectedPCR0Annotation + "=" + m1.PCR0}, []string{"but the Pod expects " + m1.PCR0, "has PCR0 "}},
		{"missing key", []string{nitropod.ImageLocationAnnotation + "=s3://releases/missing.eif"}, []string{`no object "missing.eif" in bucket "releases"`}},
		{"bad location", []string{nitropod.ImageLocationAnnotation + "=releases/app.eif"}, []string{"write it as s3://BUCKET/KEY"}},
	}
	for i, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			before := cacheState()
			out, err := run(fmt.Sprintf("s3-refused-%d", i), r.ann...)
			if err == nil {
				t.Fatalf("ctr run succeeded:\n%s", out)
			}
			for _, w := range r.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %q lacks %q", out, w)
				}
			}
			t.Logf("refused: %s", strings.TrimSpace(out))
			if got := cacheState(); fmt.Sprint(got) != fmt.Sprint(before) {
				t.Errorf("cache changed by a refused start: %v, before %v", got, before)
			}
			tmps, _ := filepath.Glob(filepath.Join(cacheDir, ".tmp-*"))
			if len(tmps) != 0 {
				t.Errorf("partial files left in the cache: %v", tmps)
			}
		})
	}
	if out, err := ctrd.Ctr(ctx, shimNS, "task", "ls", "-q"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("tasks left: %q (%v)", out, err)
	}
}
