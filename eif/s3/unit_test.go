package s3

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/s3/s3test"
)

func TestParseLocation(t *testing.T) {
	tests := []struct {
		in   string
		want Location
		bad  bool
	}{
		{in: "s3://bucket/key", want: Location{Bucket: "bucket", Key: "key"}},
		{in: "s3://my-bucket/path/to/app.eif", want: Location{Bucket: "my-bucket", Key: "path/to/app.eif"}},
		{in: "s3://bucket/", bad: true},
		{in: "s3://bucket", bad: true},
		{in: "s3:///key", bad: true},
		{in: "https://bucket/key", bad: true},
		{in: "bucket/key", bad: true},
		{in: "s3://b/key", bad: true},
		{in: "s3://bucket/dir/", bad: true},
		{in: "", bad: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseLocation(tc.in)
			if tc.bad {
				if KindOf(err) != KindInvalidLocation {
					t.Fatalf("ParseLocation(%q) = %v, %v; want an InvalidLocation error", tc.in, got, err)
				}
				if !strings.Contains(err.Error(), "s3://BUCKET/KEY") && !strings.Contains(err.Error(), "bucket name") && !strings.Contains(err.Error(), "/path/to/image.eif") {
					t.Errorf("error %q does not say how to write a location", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

func FuzzParseLocation(f *testing.F) {
	for _, s := range []string{"s3://bucket/key", "s3://b/", "s3://bucket/a/b/c.eif", "http://x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLocation(s)
		if err != nil {
			if KindOf(err) != KindInvalidLocation {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if l.String() != s || l.Bucket == "" || l.Key == "" {
			t.Fatalf("ParseLocation(%q) = %+v", s, l)
		}
	})
}

func TestExpectCheck(t *testing.T) {
	m := eif.Measurements{PCR0: strings.Repeat("a", 96), PCR8: strings.Repeat("8", 96)}
	unsigned := eif.Measurements{PCR0: m.PCR0}
	loc := Location{Bucket: "b", Key: "k"}
	tests := []struct {
		name string
		exp  Expect
		m    eif.Measurements
		want []string // substrings; nil: no error
	}{
		{name: "nothing expected", m: m},
		{name: "pcr0 matches, case and space ignored", exp: Expect{PCR0: " " + strings.ToUpper(m.PCR0) + "\n"}, m: m},
		{name: "pcr8 matches", exp: Expect{PCR8: m.PCR8}, m: m},
		{name: "pcr0 mismatch names both", exp: Expect{PCR0: strings.Repeat("b", 96)}, m: m, want: []string{"PCR0 " + m.PCR0, "expects " + strings.Repeat("b", 96)}},
		{name: "pcr8 mismatch names both", exp: Expect{PCR8: strings.Repeat("9", 96)}, m: m, want: []string{"PCR8 " + m.PCR8, "expects " + strings.Repeat("9", 96)}},
		{name: "pcr8 on unsigned", exp: Expect{PCR8: m.PCR8}, m: unsigned, want: []string{"not signed"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.exp.Check(tc.m, loc)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if KindOf(err) != KindVerification {
				t.Fatalf("err = %v, want a Verification error", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestCRCWriter(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.eif")
	s3test.WriteEIF(t, p, 3<<20+17, 1, nil)
	good, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)/2] ^= 1
	tests := []struct {
		name string
		data []byte
		err  string
	}{
		{name: "valid", data: good},
		{name: "corrupt", data: corrupt, err: "eif crc mismatch"},
		{name: "truncated", data: good[:len(good)-1], err: "eif crc mismatch"},
		{name: "short", data: good[:100], err: "shorter than an EIF header"},
		{name: "not an eif", data: append([]byte("ELF!"), good[4:]...), err: "bad magic"},
	}
	for _, tc := range tests {
		for _, chunk := range []int{1, 7, 548, 1 << 20} {
			var w crcWriter
			for d := tc.data; len(d) > 0; {
				n := min(chunk, len(d))
				_, _ = w.Write(d[:n])
				d = d[n:]
				if chunk == 1 && len(d) > 4096 { // byte by byte only through the header
					chunk = 4093
				}
			}
			err := w.check()
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("%s (chunks of %d): check() = %v, want %q", tc.name, chunk, err, tc.err)
			}
			if tc.name == "corrupt" && !errors.Is(err, eif.ErrCRC) {
				t.Errorf("corrupt: error does not wrap eif.ErrCRC")
			}
		}
	}
}

func TestBackoffBounded(t *testing.T) {
	for attempt := 1; attempt < 40; attempt++ {
		d := backoff(attempt, 3*time.Second)
		if d <= 0 || d > 3*time.Second {
			t.Fatalf("backoff(%d) = %v, want (0, 3s]", attempt, d)
		}
	}
	if d := backoff(1, time.Minute); d > 200*time.Millisecond {
		t.Errorf("first backoff %v, want ≤ 200ms", d)
	}
}

func TestPodWebIdentity(t *testing.T) {
	tokenMount := specs.Mount{Destination: "/var/run/secrets/eks.amazonaws.com/serviceaccount", Type: "bind", Options: []string{"rbind", "ro"},
		Source: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/aws-iam-token"}
	spec := func(env []string, mounts ...specs.Mount) *specs.Spec {
		return &specs.Spec{Process: &specs.Process{Env: env}, Mounts: mounts}
	}
	irsa := []string{"PATH=/bin", "AWS_ROLE_ARN=arn:aws:iam::111122223333:role/eif-reader", "AWS_WEB_IDENTITY_TOKEN_FILE=/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}
	tests := []struct {
		name string
		spec *specs.Spec
		want *WebIdentity
		err  string
	}{
		{name: "no irsa", spec: spec([]string{"PATH=/bin"}, tokenMount)},
		{name: "irsa", spec: spec(irsa, specs.Mount{Destination: "/var", Type: "bind", Source: "/elsewhere"}, tokenMount),
			want: &WebIdentity{RoleARN: "arn:aws:iam::111122223333:role/eif-reader", TokenFile: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/aws-iam-token/token",
				TokenRoot: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/aws-iam-token"}},
		{name: "session name", spec: spec(append(irsa, "AWS_ROLE_SESSION_NAME=pod-a"), tokenMount),
			want: &WebIdentity{RoleARN: "arn:aws:iam::111122223333:role/eif-reader", TokenFile: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/aws-iam-token/token",
				TokenRoot: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/aws-iam-token", SessionName: "pod-a"}},
		{name: "file mount", spec: spec(irsa, specs.Mount{Destination: "/var/run/secrets/eks.amazonaws.com/serviceaccount/token", Type: "bind", Source: "/var/lib/kubelet/pods/u/volume-subpaths/t/c/0"}),
			want: &WebIdentity{RoleARN: "arn:aws:iam::111122223333:role/eif-reader", TokenFile: "/var/lib/kubelet/pods/u/volume-subpaths/t/c/0", TokenRoot: "/var/lib/kubelet/pods/u/volume-subpaths/t/c/"}},
		{name: "token not mounted", spec: spec(irsa, specs.Mount{Destination: "/var/run/secrets/eks", Type: "tmpfs", Source: "tmpfs"}), err: "is not on a volume"},
		{name: "prefix is not a parent", spec: spec(irsa, specs.Mount{Destination: "/var/run/secrets/eks.amazonaws.com/service", Type: "bind", Source: "/x"}), err: "is not on a volume"},
		{name: "role only", spec: spec([]string{"AWS_ROLE_ARN=arn:x"}), err: "only one of"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodWebIdentity(tc.spec)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestWebIdentityTokenFile reads the Pod's token the way the STS exchange
// does: through the volume the spec mounts, refusing what a Pod can plant
// there instead of a token.
func TestWebIdentityTokenFile(t *testing.T) {
	base := t.TempDir()
	vol := filepath.Join(base, "pod-a", "volumes", "aws-iam-token")
	other := filepath.Join(base, "pod-b", "token")
	for _, d := range []string{filepath.Join(vol, "..2026"), filepath.Dir(other)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, filepath.Join(vol, "..2026", "token"), "JWT-A")
	mustWrite(t, other, "JWT-B")
	mustWrite(t, filepath.Join(vol, "huge"), strings.Repeat("x", MaxTokenSize+1))
	for target, name := range map[string]string{"..2026": "..data", "..data/token": "token", "/dev/zero": "zero", "../../../pod-b/token": "escape"} {
		if err := os.Symlink(target, filepath.Join(vol, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(vol, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want, err string }{
		{"token", "JWT-A", ""},
		{"zero", "", "outside the volume"},
		{"escape", "", "outside the volume"},
		{"fifo", "", "not a regular file"},
		{"huge", "", "file too large"},
		{".", "", "not a regular file"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			spec := &specs.Spec{
				Process: &specs.Process{Env: []string{"AWS_ROLE_ARN=arn:aws:iam::1:role/r", "AWS_WEB_IDENTITY_TOKEN_FILE=/var/run/irsa/" + tc.file}},
				Mounts:  []specs.Mount{{Destination: "/var/run/irsa", Type: "bind", Source: vol}},
			}
			wi, err := PodWebIdentity(spec)
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			b, err := newTokenFile(wi).GetIdentityToken()
			if d := time.Since(t0); d > time.Second {
				t.Errorf("took %v", d)
			}
			if tc.err == "" {
				if err != nil || string(b) != tc.want {
					t.Fatalf("token = %q, %v; want %q", b, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), EnvWebIdentityTokenFile) {
				t.Fatalf("token = %.40q, %v; want an error naming %s and %q", b, err, EnvWebIdentityTokenFile, tc.err)
			}
		})
	}
}

func mustWrite(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCheckNodeIdentity(t *testing.T) {
	loc := Location{Bucket: "releases", Key: "app.eif"}
	wi := &WebIdentity{RoleARN: "arn:aws:iam::1:role/r", TokenFile: "/t"}
	for _, tc := range []struct {
		name  string
		wi    *WebIdentity
		allow []string
		ok    bool
	}{
		{"pod identity, no allowlist", wi, nil, true},
		{"node identity, no allowlist", nil, nil, false},
		{"node identity, other bucket allowed", nil, []string{"other"}, false},
		{"node identity, bucket allowed", nil, []string{"other", "releases"}, true},
		{"node identity, any bucket", nil, []string{AnyBucket}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckNodeIdentity(loc, tc.wi, tc.allow)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if KindOf(err) != KindNotAllowed || !strings.Contains(err.Error(), "s3.node_identity_buckets") || !strings.Contains(err.Error(), `bucket "releases"`) {
				t.Fatalf("err = %v, want NotAllowed naming the bucket and s3.node_identity_buckets", err)
			}
		})
	}
}

// refusingTransport fails every request and counts them.
type refusingTransport struct{ n atomic.Int64 }

func (r *refusingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	r.n.Add(1)
	return nil, errors.New("no network in this test")
}

// TestWebIdentityHostileTokenRefused: a Client with a Pod's web identity
// reads the token through the volume rules when it needs credentials; a
// planted token is refused before any request (STS or S3) is sent.
func TestWebIdentityHostileTokenRefused(t *testing.T) {
	vol := t.TempDir()
	if err := os.Symlink("/dev/zero", filepath.Join(vol, "zero")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(vol, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"zero", "fifo"} {
		t.Run(name, func(t *testing.T) {
			tr := &refusingTransport{}
			cl, err := New(context.Background(), Config{Endpoint: "http://127.0.0.1:1", Region: "us-east-1", MaxAttempts: 1,
				HTTPClient:  &http.Client{Transport: tr},
				WebIdentity: &WebIdentity{RoleARN: "arn:aws:iam::1:role/r", TokenFile: filepath.Join(vol, name), TokenRoot: vol}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			t0 := time.Now()
			_, err = cl.Stat(ctx, Location{Bucket: "b", Key: "k"})
			if err == nil || !strings.Contains(err.Error(), EnvWebIdentityTokenFile) {
				t.Fatalf("Stat: %v, want a refusal of the token file", err)
			}
			if d := time.Since(t0); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
			if n := tr.n.Load(); n != 0 {
				t.Errorf("%d requests sent with a refused token", n)
			}
		})
	}
}
