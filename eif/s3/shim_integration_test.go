package s3_test

// Prebuilt EIFs through the real shim: a private containerd (ctrtest), the
// nitro shim, the launcher and an emulated enclave under QEMU, with
// versitygw on loopback as the S3 store. The EIF is pushed with the
// `nitropod eif push` CLI and runs a different program than the container
// image, so the output proves which one booted.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/eif/s3"
	"github.com/nitropod/nitropod/eif/s3/s3test"
	"github.com/nitropod/nitropod/internal/ctrtest"
	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/images"
)

const (
	shimNS     = "s3test"
	busyboxRef = "docker.io/library/busybox:latest"
)

// awsEnv gives the shims versitygw's root credentials and nothing else.
var awsEnv = []string{"AWS_ACCESS_KEY_ID=" + s3test.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3test.SecretKey, "AWS_REGION=us-east-1",
	"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}

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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	srv := s3test.Start(t)
	srv.CreateBucket(t, "releases")
	srv.CreateBucket(t, "private")
	// The Pods here have no IRSA identity: the node's credentials are
	// allowed for "releases" only.
	shimConfig := fmt.Sprintf("[s3]\nendpoint = %q\nnode_identity_buckets = [\"releases\"]", srv.Endpoint)
	e := shimtest.Start(t, shimtest.Options{
		ExtraPackages: []string{"./cmd/nitropod"},
		Containerd:    ctrtest.Options{Env: awsEnv},
		Config:        shimConfig,
	})
	bin, blobs, initBin, cacheDir, ctrd := e.Bin, e.Blobs, e.InitPath, e.CacheDir, e.Ctrd
	dir := t.TempDir()
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
	push(t, v1, "s3://private/app.eif")
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
		name   string
		ann    []string
		want   []string
		config string // shim config for this case only
	}{
		{name: "node identity for a bucket not allowed", ann: []string{nitropod.ImageLocationAnnotation + "=s3://private/app.eif"},
			want: []string{`bucket "private" is not in s3.node_identity_buckets`, "AWS_ROLE_ARN"}},
		{name: "larger than max_eif_bytes", ann: []string{loc}, config: shimConfig + "\nmax_eif_bytes = 4096",
			want: []string{"more than the 4096-byte limit", "s3.max_eif_bytes"}},
		{"expected PCR0 mismatch", []string{loc, nitropod.ExpectedPCR0Annotation + "=" + m1.PCR0}, []string{"but the Pod expects " + m1.PCR0, "has PCR0 "}, ""},
		{"missing key", []string{nitropod.ImageLocationAnnotation + "=s3://releases/missing.eif"}, []string{`no object "missing.eif" in bucket "releases"`}, ""},
		{"bad location", []string{nitropod.ImageLocationAnnotation + "=releases/app.eif"}, []string{"write it as s3://BUCKET/KEY"}, ""},
	}
	for i, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			if r.config != "" {
				e.Configure(t, r.config)
				defer e.Configure(t, shimConfig)
			}
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

// objectAccess counts what an S3 store served for one object: the shims'
// one-byte Stat GETs, and the download GETs with the bytes they carried.
type objectAccess struct {
	path string
	mu   sync.Mutex
	// stats are GETs of bytes=0-0; downloads all other GETs.
	stats, downloads int
	downloadBytes    int64
	ranges           []string
}

// proxy is a reverse proxy to target that records accesses to a.path; the
// shims talk to versitygw through it.
func (a *objectAccess) proxy(t *testing.T, target string) *httptest.Server {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u) // keeps the signed Host header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != a.path {
			rp.ServeHTTP(w, r)
			return
		}
		cw := &countingResponse{ResponseWriter: w}
		rp.ServeHTTP(cw, r)
		a.mu.Lock()
		defer a.mu.Unlock()
		rg := r.Header.Get("Range")
		a.ranges = append(a.ranges, rg)
		if rg == "bytes=0-0" {
			a.stats++
			return
		}
		a.downloads++
		a.downloadBytes += cw.n
	}))
	t.Cleanup(srv.Close)
	return srv
}

type countingResponse struct {
	http.ResponseWriter
	n int64
}

func (c *countingResponse) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingResponse) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

var readyRe = regexp.MustCompile(`msg="enclave image ready".*cache_hit=(true|false)`)

// TestConcurrentImageLocationThroughShim creates ten containers at once, each
// in its own shim, whose spec names the same prebuilt EIF by
// nitro.k8s.anjuna.io/imageLocation: the store serves the EIF once (counted
// by a proxy in front of versitygw), one shim logs a cache miss and nine a
// hit, all ten enclaves run the EIF's program, and nothing is left behind.
func TestConcurrentImageLocationThroughShim(t *testing.T) {
	testenv.Integration(t)
	const n = 10
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	srv := s3test.Start(t)
	srv.CreateBucket(t, "shared")
	loc := s3.Location{Bucket: "shared", Key: "apps/one.eif"}
	access := &objectAccess{path: "/" + loc.Bucket + "/" + loc.Key}
	front := access.proxy(t, srv.Endpoint)
	// 256 MiB per enclave: the QEMU backend needs about 140 MiB for this EIF.
	e := shimtest.Start(t, shimtest.Options{
		MemoryMiB:  256,
		Containerd: ctrtest.Options{Env: awsEnv},
		Config:     fmt.Sprintf("[s3]\nendpoint = %q\nnode_identity_buckets = [\"shared\"]", front.URL),
	})
	img, err := images.Busybox(testenv.Binary(t, "busybox"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Ctrd.Import(ctx, shimNS, busyboxRef, img); err != nil {
		t.Fatal(err)
	}

	// The app prints and exits at once, so ten TCG guests stay cheap.
	eifPath := filepath.Join(t.TempDir(), "one.eif")
	buildEIF(t, eifPath, e.Blobs, e.InitPath, "echo from the shared eif; exit 5", nil)
	fi, err := os.Stat(eifPath)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := s3.New(ctx, s3.Config{Endpoint: srv.Endpoint, Credentials: s3test.Credentials()})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cl.Push(ctx, eifPath, loc); err != nil {
		t.Fatal(err)
	}

	type result struct {
		out  string
		code int
	}
	results := make([]result, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range n {
		ids[i] = fmt.Sprintf("conc-%02d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := e.Ctrd.CtrCmd(ctx, shimNS, "run", "--rm", "--runtime", nitropod.RuntimeType,
				"--annotation", nitropod.ImageLocationAnnotation+"="+loc.String(),
				busyboxRef, ids[i], "sh", "-c", "echo from the container image")
			out, err := cmd.CombinedOutput()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				code = -1
			}
			results[i] = result{string(out), code}
		}()
	}
	wg.Wait()
	t.Logf("%d concurrent ctr runs took %v", n, time.Since(t0).Round(time.Millisecond))

	for i, r := range results {
		if r.code != 5 || !strings.Contains(r.out, "from the shared eif") || strings.Contains(r.out, "from the container image") {
			t.Errorf("%s: exit code %d, output %q; want 5 and the prebuilt EIF's output only", ids[i], r.code, r.out)
		}
	}

	// The store: one download of the whole object, one Stat per Create.
	access.mu.Lock()
	t.Logf("object GETs: %d stats, %d downloads, %d bytes downloaded (object %d bytes); ranges %v",
		access.stats, access.downloads, access.downloadBytes, fi.Size(), access.ranges)
	if access.downloads != 1 || access.downloadBytes != fi.Size() {
		t.Errorf("the store served %d download GETs with %d bytes, want 1 with the object's %d bytes", access.downloads, access.downloadBytes, fi.Size())
	}
	if access.stats < n {
		t.Errorf("the store saw %d Stat GETs, want at least %d (one per Create): the shims did not all ask it", access.stats, n)
	}
	access.mu.Unlock()

	// The shims: one cache miss, the other nine hits.
	misses, hits := 0, 0
	log := e.Ctrd.Log()
	for _, id := range ids {
		found := false
		for _, l := range strings.Split(log, "\n") {
			m := readyRe.FindStringSubmatch(l)
			if m == nil || !strings.Contains(l, "id="+id+" ") && !strings.HasSuffix(l, "id="+id) {
				continue
			}
			found = true
			if m[1] == "true" {
				hits++
			} else {
				misses++
			}
		}
		if !found {
			t.Errorf("%s: no \"enclave image ready\" line in the shim log", id)
		}
	}
	if misses != 1 || hits != n-1 {
		t.Errorf("shim log: %d cache misses and %d hits, want 1 and %d", misses, hits, n-1)
	}

	// The cache: one entry, nothing partial.
	if eifs, _ := filepath.Glob(filepath.Join(e.CacheDir, "*.eif")); len(eifs) != 1 {
		t.Errorf("cache holds %v, want one entry", eifs)
	}
	if tmps, _ := filepath.Glob(filepath.Join(e.CacheDir, ".tmp-*")); len(tmps) != 0 {
		t.Errorf("partial files left in the cache: %v", tmps)
	}

	// Nothing left: tasks, containers, shims, launchers, QEMU, mounts.
	for _, what := range []string{"tasks", "containers"} {
		if out, err := e.Ctrd.Ctr(ctx, shimNS, what, "ls", "-q"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s left: %q (%v)", what, out, err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		shims, left := e.ShimProcesses(), e.Leftovers()
		if shims == 0 && len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("15s after the runs: %d shim processes; left:\n%s", shims, strings.Join(left, "\n"))
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}
