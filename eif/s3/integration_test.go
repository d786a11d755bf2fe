package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/s3/s3test"
	"github.com/nitropod/nitropod/eifcache"
	"github.com/nitropod/nitropod/internal/testenv"
)

// countingTransport counts the GETs that start a full download ("bytes=0-")
// and the body bytes received, and can call a hook once a number of body
// bytes has arrived. The server behind it is real.
type countingTransport struct {
	base      http.RoundTripper
	downloads atomic.Int64
	bytes     atomic.Int64
	hookAt    int64
	hook      func()
	hookOnce  sync.Once
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && r.Header.Get("Range") == "bytes=0-" {
		c.downloads.Add(1)
	}
	resp, err := c.base.RoundTrip(r)
	if err == nil && r.Method == http.MethodGet {
		resp.Body = &countingBody{ReadCloser: resp.Body, t: c}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	t *countingTransport
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	total := b.t.bytes.Add(int64(n))
	if b.t.hook != nil && total >= b.t.hookAt {
		b.t.hookOnce.Do(b.t.hook)
	}
	return n, err
}

type fixture struct {
	srv    *s3test.Server
	tr     *countingTransport
	client *Client
	dir    string
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	testenv.Integration(t)
	f := &fixture{srv: s3test.Start(t), dir: t.TempDir()}
	f.srv.CreateBucket(t, "eifs")
	f.tr = &countingTransport{base: http.DefaultTransport.(*http.Transport).Clone()}
	f.client = f.newClient(t, cfg)
	return f
}

func (f *fixture) newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	cfg.Endpoint = f.srv.Endpoint
	if cfg.Credentials == nil {
		cfg.Credentials = s3test.Credentials()
	}
	cfg.HTTPClient = &http.Client{Transport: f.tr}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 300 * time.Millisecond
	}
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) push(t *testing.T, name string, size int64, seed uint64, signer *eif.Signer) (Location, eif.Measurements, string) {
	t.Helper()
	p := filepath.Join(f.dir, name)
	m := s3test.WriteEIF(t, p, size, seed, signer)
	loc := Location{Bucket: "eifs", Key: "release/" + name}
	if _, _, err := f.client.Push(ctx(t), p, loc); err != nil {
		t.Fatalf("Push: %v", err)
	}
	return loc, m, p
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func openCache(t *testing.T, dir string) *eifcache.Cache {
	t.Helper()
	c, err := eifcache.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// cacheFiles lists the cache directory without lock files.
func cacheFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".lock") {
			out = append(out, e.Name())
		}
	}
	return out
}

func sha(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestPushPull(t *testing.T) {
	f := newFixture(t, Config{})
	loc, m, src := f.push(t, "app.eif", 5<<20, 1, nil)
	dst := filepath.Join(f.dir, "pulled.eif")
	obj, rep, err := f.client.Pull(ctx(t), loc, dst, Expect{PCR0: m.PCR0})
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if sha(t, src) != sha(t, dst) {
		t.Error("pulled file differs from the pushed one")
	}
	if rep.Measurements.PCR0 != m.PCR0 {
		t.Errorf("pulled PCR0 %s, pushed %s", rep.Measurements.PCR0, m.PCR0)
	}
	if fi, _ := os.Stat(src); obj.Size != fi.Size() || obj.ETag == "" {
		t.Errorf("object %+v, want size %d and an ETag", obj, fi.Size())
	}
	// A failed pull leaves neither the destination nor a part file.
	_, _, err = f.client.Pull(ctx(t), Location{Bucket: "eifs", Key: "nope.eif"}, filepath.Join(f.dir, "nope.eif"), Expect{})
	if KindOf(err) != KindNotFound {
		t.Errorf("Pull of a missing key: %v, want NotFound", err)
	}
	ents, _ := os.ReadDir(f.dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "nope") {
			t.Errorf("failed pull left %s", e.Name())
		}
	}
	// Push refuses a file that is not a valid EIF.
	bad := filepath.Join(f.dir, "bad.eif")
	if err := os.WriteFile(bad, []byte("not an eif"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.client.Push(ctx(t), bad, Location{Bucket: "eifs", Key: "bad.eif"}); err == nil {
		t.Error("Push accepted a file that is not an EIF")
	}
}

func TestFetchCacheHitAndReplace(t *testing.T) {
	f := newFixture(t, Config{})
	loc, m1, _ := f.push(t, "app.eif", 4<<20, 1, nil)
	cdir := filepath.Join(f.dir, "cache")
	cache := openCache(t, cdir)

	r, err := f.client.Fetch(ctx(t), cache, loc, Expect{PCR0: m1.PCR0})
	if err != nil {
		t.Fatalf("first Fetch: %v", err)
	}
	r.Release()
	if !r.Downloaded || r.Entry.Hit || f.tr.downloads.Load() != 1 {
		t.Fatalf("first Fetch: downloaded=%v hit=%v downloads=%d, want a download", r.Downloaded, r.Entry.Hit, f.tr.downloads.Load())
	}

	before := f.tr.bytes.Load()
	r, err = f.client.Fetch(ctx(t), cache, loc, Expect{PCR0: m1.PCR0})
	if err != nil {
		t.Fatalf("second Fetch: %v", err)
	}
	r.Release()
	if r.Downloaded || !r.Entry.Hit || f.tr.downloads.Load() != 1 {
		t.Errorf("second Fetch: downloaded=%v hit=%v downloads=%d, want a cache hit", r.Downloaded, r.Entry.Hit, f.tr.downloads.Load())
	}
	if got := f.tr.bytes.Load() - before; got > 1024 {
		t.Errorf("second Fetch received %d body bytes, want only the 1-byte stat", got)
	}

	// Replace the object: new ETag, new download, new measurements.
	p2 := filepath.Join(f.dir, "app2.eif")
	m2 := s3test.WriteEIF(t, p2, 4<<20, 2, nil)
	if _, _, err := f.client.Push(ctx(t), p2, loc); err != nil {
		t.Fatal(err)
	}
	r, err = f.client.Fetch(ctx(t), cache, loc, Expect{})
	if err != nil {
		t.Fatalf("Fetch after replace: %v", err)
	}
	defer r.Release()
	if !r.Downloaded || f.tr.downloads.Load() != 2 {
		t.Errorf("Fetch after replace: downloaded=%v downloads=%d, want a new download", r.Downloaded, f.tr.downloads.Load())
	}
	if r.Report.Measurements.PCR0 != m2.PCR0 {
		t.Errorf("PCR0 after replace %s, want the new image's %s", r.Report.Measurements.PCR0, m2.PCR0)
	}
	if sha(t, r.Entry.Path) != sha(t, p2) {
		t.Error("cached file is not the replacement")
	}
}

func TestFetchSigned(t *testing.T) {
	f := newFixture(t, Config{})
	signer := s3test.Signer(t)
	loc, m, _ := f.push(t, "signed.eif", 1<<20, 3, signer)
	cache := openCache(t, filepath.Join(f.dir, "cache"))
	r, err := f.client.Fetch(ctx(t), cache, loc, Expect{PCR0: m.PCR0, PCR8: signer.PCR8()})
	if err != nil {
		t.Fatalf("Fetch of a signed EIF with matching PCR0 and PCR8: %v", err)
	}
	r.Release()
	if !r.Report.Signed || !r.Report.SignatureOK || r.Report.Measurements.PCR8 != signer.PCR8() {
		t.Errorf("report %+v, want a verified signature with PCR8 %s", r.Report, signer.PCR8())
	}
}

func TestFetchRefusals(t *testing.T) {
	f := newFixture(t, Config{MaxAttempts: 2})
	loc, m, _ := f.push(t, "app.eif", 1<<20, 1, nil)

	// A signed EIF tampered after signing (CRC fixed up): uploaded raw,
	// since Push itself refuses it.
	signer := s3test.Signer(t)
	sp := filepath.Join(f.dir, "tampered.eif")
	s3test.WriteEIF(t, sp, 1<<20, 4, signer)
	s3test.Tamper(t, sp, eif.HeaderSize+eif.SectionHeaderSize+100)
	if _, _, err := f.client.Push(ctx(t), sp, Location{Bucket: "eifs", Key: "tampered.eif"}); KindOf(err) != KindVerification {
		t.Errorf("Push of a tampered signed EIF: %v, want a Verification error", err)
	}
	putRaw(t, f, "tampered.eif", sp)
	// An object that is not an EIF, and one with a bad CRC.
	np := filepath.Join(f.dir, "notaneif")
	if err := os.WriteFile(np, bytes.Repeat([]byte("x"), 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	putRaw(t, f, "notaneif", np)
	cp := filepath.Join(f.dir, "badcrc.eif")
	s3test.WriteEIF(t, cp, 1<<20, 5, nil)
	b, _ := os.ReadFile(cp)
	b[len(b)-3] ^= 0x55
	if err := os.WriteFile(cp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	putRaw(t, f, "badcrc.eif", cp)

	wrongCreds := f.newClient(t, Config{Credentials: credentials.NewStaticCredentialsProvider("WRONGKEY", "wrongsecret", "")})
	// A closed port on loopback.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	deadEndpoint := "http://" + l.Addr().String()
	l.Close()
	dead, err := New(context.Background(), Config{Endpoint: deadEndpoint, Credentials: s3test.Credentials(), MaxAttempts: 2, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	// A listener that accepts and never answers: a hung store.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hung.Close() })
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	slow, err := New(context.Background(), Config{Endpoint: "http://" + hung.Addr().String(), Credentials: s3test.Credentials(),
		MaxAttempts: 1, StallTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		client *Client
		loc    Location
		exp    Expect
		kind   Kind
		want   []string
	}{
		{name: "pcr0 mismatch", client: f.client, loc: loc, exp: Expect{PCR0: strings.Repeat("0", 96)}, kind: KindVerification,
			want: []string{"PCR0 " + m.PCR0, "expects " + strings.Repeat("0", 96)}},
		{name: "pcr8 expected on unsigned", client: f.client, loc: loc, exp: Expect{PCR8: signer.PCR8()}, kind: KindVerification, want: []string{"not signed"}},
		{name: "tampered signed eif", client: f.client, loc: Location{Bucket: "eifs", Key: "tampered.eif"}, kind: KindVerification, want: []string{"signature does not verify"}},
		{name: "not an eif", client: f.client, loc: Location{Bucket: "eifs", Key: "notaneif"}, kind: KindCorrupt, want: []string{"not a valid EIF", "bad magic"}},
		{name: "corrupt crc", client: f.client, loc: Location{Bucket: "eifs", Key: "badcrc.eif"}, kind: KindCorrupt, want: []string{"crc mismatch"}},
		{name: "missing key", client: f.client, loc: Location{Bucket: "eifs", Key: "missing.eif"}, kind: KindNotFound, want: []string{`no object "missing.eif" in bucket "eifs"`}},
		{name: "missing bucket", client: f.client, loc: Location{Bucket: "nobucket", Key: "app.eif"}, kind: KindNotFound, want: []string{`bucket "nobucket" does not exist`}},
		{name: "wrong credentials", client: wrongCreds, loc: loc, kind: KindAccessDenied, want: []string{"access key WRONGKEY"}},
		{name: "timeout", client: slow, loc: loc, kind: KindTimeout, want: []string{"timed out talking to http://" + hung.Addr().String()}},
		{name: "bad endpoint", client: dead, loc: loc, kind: KindEndpoint, want: []string{"cannot reach the S3 endpoint " + deadEndpoint}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cdir := filepath.Join(t.TempDir(), "cache")
			cache := openCache(t, cdir)
			r, err := tc.client.Fetch(ctx(t), cache, tc.loc, tc.exp)
			if err == nil {
				r.Release()
				t.Fatal("Fetch succeeded")
			}
			if KindOf(err) != tc.kind {
				t.Fatalf("Fetch error kind %q (%v), want %q", KindOf(err), err, tc.kind)
			}
			t.Logf("refused: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tc.kind != KindVerification || strings.Contains(tc.name, "tampered") {
				if files := cacheFiles(t, cdir); len(files) != 0 {
					t.Errorf("cache holds %v after a failed fetch", files)
				}
			}
		})
	}
}

// putRaw stores a file without Push's checks, with the plain SDK call.
func putRaw(t *testing.T, f *fixture, key, path string) {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := f.client.putObject(ctx(t), Location{Bucket: "eifs", Key: key}, fh); err != nil {
		t.Fatal(err)
	}
}

func TestFetchServerStoppedMidDownload(t *testing.T) {
	f := newFixture(t, Config{MaxAttempts: 3})
	loc, _, _ := f.push(t, "big.eif", 96<<20, 7, nil)
	cdir := filepath.Join(f.dir, "cache")
	cache := openCache(t, cdir)
	f.tr.bytes.Store(0)
	f.tr.hookAt = 8 << 20
	f.tr.hook = f.srv.Stop
	start := time.Now()
	r, err := f.client.Fetch(ctx(t), cache, loc, Expect{})
	if err == nil {
		r.Release()
		t.Fatal("Fetch succeeded although the server was stopped during the download")
	}
	t.Logf("refused after %v: %v", time.Since(start), err)
	if k := KindOf(err); k != KindEndpoint {
		t.Errorf("error kind %q, want %q: %v", k, KindEndpoint, err)
	}
	if !strings.Contains(err.Error(), "stopped at byte") {
		t.Errorf("error %q does not say where the download stopped", err)
	}
	if files := cacheFiles(t, cdir); len(files) != 0 {
		t.Errorf("cache holds %v after the interrupted download", files)
	}
	// With the server back, the same fetch completes (no stale state).
	f.tr.hook = nil
	if err := f.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	r, err = f.client.Fetch(ctx(t), cache, loc, Expect{})
	if err != nil {
		t.Fatalf("Fetch after restart: %v", err)
	}
	r.Release()
}

func TestFetchResumesAfterDroppedConnection(t *testing.T) {
	f := newFixture(t, Config{MaxAttempts: 4})
	loc, _, src := f.push(t, "big.eif", 48<<20, 8, nil)
	cache := openCache(t, filepath.Join(f.dir, "cache"))
	f.tr.bytes.Store(0)
	f.tr.hookAt = 4 << 20
	// Stop and restart at once: the open connection dies, the next ranged
	// GET resumes where it stopped.
	f.tr.hook = func() {
		f.srv.Stop()
		if err := f.srv.Restart(); err != nil {
			t.Error(err)
		}
	}
	r, err := f.client.Fetch(ctx(t), cache, loc, Expect{})
	if err != nil {
		t.Fatalf("Fetch with a dropped connection: %v", err)
	}
	defer r.Release()
	if sha(t, r.Entry.Path) != sha(t, src) {
		t.Error("resumed download differs from the object")
	}
	fi, _ := os.Stat(src)
	if got := f.tr.bytes.Load(); got > fi.Size()+(8<<20) {
		t.Errorf("received %d bytes for a %d-byte object: the download restarted instead of resuming", got, fi.Size())
	}
}

func TestFetchConcurrentOneDownload(t *testing.T) {
	f := newFixture(t, Config{})
	loc, m, _ := f.push(t, "app.eif", 16<<20, 9, nil)
	cdir := filepath.Join(f.dir, "cache")
	var wg sync.WaitGroup
	errs := make([]error, 10)
	results := make([]*Result, 10)
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each "container" has its own client and cache handle, as
			// separate shims on one node would.
			c := f.newClient(t, Config{})
			results[i], errs[i] = c.Fetch(ctx(t), openCache(t, cdir), loc, Expect{PCR0: m.PCR0})
		}()
	}
	wg.Wait()
	downloaded := 0
	for i := range 10 {
		if errs[i] != nil {
			t.Errorf("fetch %d: %v", i, errs[i])
			continue
		}
		if results[i].Downloaded {
			downloaded++
		}
		results[i].Release()
	}
	if n := f.tr.downloads.Load(); n != 1 || downloaded != 1 {
		t.Errorf("%d downloads started, %d fetches downloaded; want 1 and 1", n, downloaded)
	}
}

// TestFetchSizeLimit: an object larger than MaxObjectSize is refused from
// its Stat, before any download GET, and leaves nothing in the cache.
func TestFetchSizeLimit(t *testing.T) {
	f := newFixture(t, Config{MaxObjectSize: 1 << 20})
	loc, _, _ := f.push(t, "big.eif", 3<<20, 1, nil)
	cdir := filepath.Join(f.dir, "cache")
	cache := openCache(t, cdir)
	_, err := f.client.Fetch(ctx(t), cache, loc, Expect{})
	if KindOf(err) != KindTooLarge || !strings.Contains(err.Error(), "s3.max_eif_bytes") || !strings.Contains(err.Error(), "1048576-byte limit") {
		t.Fatalf("Fetch: %v, want TooLarge naming the limit and s3.max_eif_bytes", err)
	}
	if n := f.tr.downloads.Load(); n != 0 {
		t.Errorf("%d download GETs for a refused object, want 0", n)
	}
	if n := f.tr.bytes.Load(); n > 1 {
		t.Errorf("%d body bytes received, want at most the one-byte Stat", n)
	}
	if files := cacheFiles(t, cdir); len(files) != 0 {
		t.Errorf("cache holds %v after a refused fetch", files)
	}
	if _, _, err := f.client.Pull(ctx(t), loc, filepath.Join(f.dir, "pulled.eif"), Expect{}); KindOf(err) != KindTooLarge {
		t.Errorf("Pull: %v, want TooLarge", err)
	}
	// Under the limit it downloads.
	small, _, _ := f.push(t, "small.eif", 256<<10, 2, nil)
	r, err := f.client.Fetch(ctx(t), cache, small, Expect{})
	if err != nil {
		t.Fatalf("Fetch under the limit: %v", err)
	}
	r.Release()
}

// shrinkingTransport makes the store announce a smaller object than it
// serves: it rewrites the total of the one-byte Stat's Content-Range.
type shrinkingTransport struct {
	base  http.RoundTripper
	claim string
}

func (s *shrinkingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.base.RoundTrip(r)
	if err == nil && r.Header.Get("Range") == "bytes=0-0" {
		if cr := resp.Header.Get("Content-Range"); cr != "" {
			head, _, _ := strings.Cut(cr, "/")
			resp.Header.Set("Content-Range", head+"/"+s.claim)
		}
	}
	return resp, err
}

// TestDownloadStopsAtAnnouncedSize: a store that sends more than the size
// it announced is cut off there; the surplus is not written.
func TestDownloadStopsAtAnnouncedSize(t *testing.T) {
	f := newFixture(t, Config{})
	loc, _, _ := f.push(t, "app.eif", 8<<20, 1, nil)
	cl, err := New(context.Background(), Config{Endpoint: f.srv.Endpoint, Credentials: s3test.Credentials(), MaxObjectSize: 2 << 20,
		HTTPClient: &http.Client{Transport: &shrinkingTransport{base: f.tr, claim: "1000000"}}})
	if err != nil {
		t.Fatal(err)
	}
	cdir := filepath.Join(f.dir, "cache")
	_, err = cl.Fetch(ctx(t), openCache(t, cdir), loc, Expect{})
	if KindOf(err) != KindCorrupt || !strings.Contains(err.Error(), "more bytes than the object's size") {
		t.Fatalf("Fetch: %v, want Corrupt: more bytes than announced", err)
	}
	if n := f.tr.bytes.Load(); n >= 8<<20 {
		t.Errorf("received %d bytes of an object announced as 1000000: the download was not cut off", n)
	}
	if files := cacheFiles(t, cdir); len(files) != 0 {
		t.Errorf("cache holds %v", files)
	}
}

// slowDownTransport answers the first n requests itself with S3's 503
// SlowDown, as a throttled store does, and passes the rest to base (the
// real versitygw). n < 0 throttles every request.
type slowDownTransport struct {
	base      http.RoundTripper
	n         int64
	throttled atomic.Int64
}

func (s *slowDownTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if s.n < 0 || s.throttled.Load() < s.n {
		s.throttled.Add(1)
		body := `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`
		return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Slow Down", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/xml"}}, Body: io.NopCloser(strings.NewReader(body)),
			ContentLength: int64(len(body)), Request: r}, nil
	}
	return s.base.RoundTrip(r)
}

// TestFetchSlowDown: a store that throttles (503 SlowDown) a few times is
// retried with backoff and the fetch succeeds; one that keeps throttling
// fails within the bounded attempts with an error that says so, and the
// cache holds nothing.
func TestFetchSlowDown(t *testing.T) {
	f := newFixture(t, Config{})
	loc, _, src := f.push(t, "app.eif", 2<<20, 3, nil)

	brief := &slowDownTransport{base: f.tr, n: 2}
	cl, err := New(context.Background(), Config{Endpoint: f.srv.Endpoint, Credentials: s3test.Credentials(), MaxBackoff: 100 * time.Millisecond,
		HTTPClient: &http.Client{Transport: brief}})
	if err != nil {
		t.Fatal(err)
	}
	cache := openCache(t, filepath.Join(f.dir, "cache-brief"))
	r, err := cl.Fetch(ctx(t), cache, loc, Expect{})
	if err != nil {
		t.Fatalf("Fetch after %d SlowDown answers: %v", brief.throttled.Load(), err)
	}
	if sha(t, r.Entry.Path) != sha(t, src) {
		t.Error("fetched EIF differs from the object")
	}
	r.Release()
	if got := brief.throttled.Load(); got != 2 {
		t.Errorf("%d requests throttled, want 2", got)
	}

	always := &slowDownTransport{base: f.tr, n: -1}
	cl, err = New(context.Background(), Config{Endpoint: f.srv.Endpoint, Credentials: s3test.Credentials(), MaxBackoff: 100 * time.Millisecond,
		HTTPClient: &http.Client{Transport: always}})
	if err != nil {
		t.Fatal(err)
	}
	cdir := filepath.Join(f.dir, "cache-always")
	start := time.Now()
	_, err = cl.Fetch(ctx(t), openCache(t, cdir), loc, Expect{})
	if err == nil {
		t.Fatal("Fetch succeeded against a store that always throttles")
	}
	if !strings.Contains(err.Error(), "SlowDown") {
		t.Errorf("error %q does not say the store is throttling (SlowDown)", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("gave up after %v; want a bounded number of attempts", d)
	}
	t.Logf("always throttled: %d requests in %v: %v", always.throttled.Load(), time.Since(start).Round(time.Millisecond), err)
	ents, _ := os.ReadDir(cdir)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("cache holds %s after a failed fetch", e.Name())
		}
	}
}
