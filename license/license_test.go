package license

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod"
)

func testKey(b byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = b
	}
	return ed25519.NewKeyFromSeed(seed)
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

func date(s string) time.Time {
	t, err := ParseTime(s)
	if err != nil {
		panic(err)
	}
	return t
}

func mustIssue(t *testing.T, terms Terms, k ed25519.PrivateKey) []byte {
	t.Helper()
	b, err := Issue(terms, k)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	return b
}

var baseTerms = Terms{
	Licensee: "Example Corp",
	Issued:   date("2026-01-01"),
	Expires:  date("2026-01-31"),
	Limits:   Limits{MaxEnclavesPerPod: 2, MaxEnclavesPerNode: 4, Namespaces: []string{"prod", "default"}},
}

func TestVerify(t *testing.T) {
	issuer, other := testKey(1), testKey(2)
	valid := mustIssue(t, baseTerms, issuer)
	unlimited := mustIssue(t, Terms{Licensee: "U", Issued: date("2026-01-01"), Expires: date("2027-01-01")}, issuer)
	inJan := date("2026-01-15")
	okCtx := Context{Namespace: "default", EnclavesInPod: 1, EnclavesOnNode: 1}

	tests := []struct {
		name    string
		data    []byte
		keys    []ed25519.PublicKey
		now     time.Time
		ctx     Context
		reason  Reason
		message string // substring of the error
	}{
		{name: "valid", data: valid, keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx},
		{name: "valid with second trusted key", data: valid, keys: []ed25519.PublicKey{pub(other), pub(issuer)}, now: inJan, ctx: okCtx},
		{name: "valid on first day", data: valid, keys: []ed25519.PublicKey{pub(issuer)}, now: date("2026-01-01"), ctx: okCtx},
		{name: "valid at limits", data: valid, keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: Context{Namespace: "prod", EnclavesInPod: 2, EnclavesOnNode: 4}},
		{name: "no limits allow anything", data: unlimited, keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: Context{Namespace: "x", EnclavesInPod: 100, EnclavesOnNode: 100}},
		{name: "expired", data: valid, keys: []ed25519.PublicKey{pub(issuer)}, now: date("2026-02-01"), ctx: okCtx,
			reason: ReasonExpired, message: `licence for "Example Corp" expired on 2026-01-31`},
		{name: "expired at the instant", data: valid, keys: []ed25519.PublicKey{pub(issuer)}, now: date("2026-01-31"), ctx: okCtx,
			reason: ReasonExpired, message: "expired on 2026-01-31"},
		{name: "not yet valid", data: valid, keys: []ed25519.PublicKey{pub(issuer)}, now: date("2025-12-31"), ctx: okCtx,
			reason: ReasonNotYetValid, message: "not valid before 2026-01-01"},
		{name: "wrong key", data: valid, keys: []ed25519.PublicKey{pub(other)}, now: inJan, ctx: okCtx,
			reason: ReasonUntrusted, message: "not signed by a trusted key"},
		{name: "no keys configured", data: valid, now: inJan, ctx: okCtx,
			reason: ReasonNoTrustedKey, message: "no trusted licence public key"},
		{name: "forged expiry", data: []byte(strings.Replace(string(valid), "2026-01-31", "2036-01-31", 1)), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonUntrusted, message: "not signed by a trusted key"},
		{name: "forged licensee", data: []byte(strings.Replace(string(valid), "Example Corp", "Example Corq", 1)), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonUntrusted},
		{name: "forged limit", data: []byte(strings.Replace(string(valid), "maxEnclavesPerNode: 4", "maxEnclavesPerNode: 40", 1)), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonUntrusted},
		{name: "forged namespace", data: []byte(strings.Replace(string(valid), "- prod", "- kube-system", 1)), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonUntrusted},
		{name: "signature not base64", data: []byte(strings.Replace(string(valid), "signature: ", "signature: '!!'\nx: ", 1)), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonMalformed},
		{name: "malformed yaml", data: []byte("licensee: [unclosed\n"), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonMalformed, message: "not valid licence YAML"},
		{name: "empty file", data: []byte("\n"), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonMalformed, message: "empty"},
		{name: "unknown field", data: append([]byte("extra: 1\n"), valid...), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonMalformed},
		{name: "wrong kind", data: []byte(strings.Replace(string(valid), "kind: License", "kind: Secret", 1)), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonMalformed, message: `kind "Secret"`},
		{name: "bad date", data: []byte(strings.Replace(string(valid), "2026-01-31T00:00:00Z", "next year", 1)), keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: okCtx,
			reason: ReasonMalformed, message: `bad date "next year"`},
		{name: "namespace not allowed", data: valid, keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: Context{Namespace: "kube-system"},
			reason: ReasonNamespace, message: `does not allow namespace "kube-system" (allowed: default, prod)`},
		{name: "too many enclaves in pod", data: valid, keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: Context{Namespace: "default", EnclavesInPod: 3},
			reason: ReasonLimit, message: "allows 2 enclaves per Pod, this Pod needs 3"},
		{name: "too many enclaves on node", data: valid, keys: []ed25519.PublicKey{pub(issuer)}, now: inJan, ctx: Context{Namespace: "default", EnclavesOnNode: 5},
			reason: ReasonLimit, message: "allows 4 enclaves per node, this node would run 5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Verify(tc.data, tc.keys, tc.now, tc.ctx)
			if got := ReasonOf(err); got != tc.reason {
				t.Fatalf("Verify reason = %q (err %v), want %q", got, err, tc.reason)
			}
			if tc.reason == "" {
				if l == nil {
					t.Fatal("Verify returned no licence")
				}
				return
			}
			if l != nil {
				t.Errorf("Verify returned a licence with an error")
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not contain %q", err, tc.message)
			}
		})
	}
}

func TestIssuedFileAndCanonical(t *testing.T) {
	b := mustIssue(t, baseTerms, testKey(1))
	l, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := `nitropod-license-v1` + "\n" +
		`{"licensee":"Example Corp","issued":"2026-01-01T00:00:00Z","expires":"2026-01-31T00:00:00Z","maxEnclavesPerPod":2,"maxEnclavesPerNode":4,"namespaces":["default","prod"]}`
	if diff := cmp.Diff(want, string(l.Canonical())); diff != "" {
		t.Errorf("canonical encoding (-want +got):\n%s", diff)
	}
	// Ed25519 is deterministic: the whole file is a golden file.
	golden := filepath.Join("testdata", "example-license.yaml")
	if os.Getenv("UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(golden, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	g, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(g), string(b)); diff != "" {
		t.Errorf("issued licence differs from %s (-want +got):\n%s", golden, diff)
	}
	if l.KeyID != KeyID(pub(testKey(1))) {
		t.Errorf("keyID = %q, want %q", l.KeyID, KeyID(pub(testKey(1))))
	}
}

func TestHandWrittenLicence(t *testing.T) {
	// Formatting, key order, comments and bare dates do not matter, only the values.
	k := testKey(1)
	issued := mustIssue(t, Terms{Licensee: "Hand", Issued: date("2026-01-01"), Expires: date("2026-06-30")}, k)
	l, _ := Parse(issued)
	hand := "# written by hand\nsignature: " + l.Signature + "\nexpires: 2026-06-30\nissued: \"2026-01-01T01:00:00+01:00\"\nlicensee: Hand\nkind: License\napiVersion: nitropod.io/v1\n"
	if _, err := Verify([]byte(hand), []ed25519.PublicKey{pub(k)}, date("2026-03-01"), Context{}); err != nil {
		t.Fatalf("hand-written licence: %v", err)
	}
}

func TestKeysRoundTrip(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	pk, err := MarshalPrivateKey(k1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePrivateKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(k1) {
		t.Error("private key changed in a round trip")
	}
	p1, _ := MarshalPublicKey(pub(k1))
	p2, _ := MarshalPublicKey(pub(k2))
	keys, err := ParsePublicKeys(append(p1, p2...))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]ed25519.PublicKey{pub(k1), pub(k2)}, keys); diff != "" {
		t.Errorf("public keys (-want +got):\n%s", diff)
	}
	if _, err := ParsePublicKeys(pk); err == nil {
		t.Error("ParsePublicKeys accepted a private key file")
	}
	if _, err := ParsePrivateKey(p1); err == nil {
		t.Error("ParsePrivateKey accepted a public key file")
	}
}

func TestHostPath(t *testing.T) {
	tests := []struct {
		name   string
		mounts []specs.Mount
		want   string
		ok     bool
	}{
		{name: "none", mounts: []specs.Mount{{Destination: "/etc/hosts", Source: "/h"}}},
		{name: "directory", mounts: []specs.Mount{{Destination: nitropod.LicenseDir, Source: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/anjuna-license"}},
			want: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/anjuna-license/license.yaml", ok: true},
		{name: "directory with slash", mounts: []specs.Mount{{Destination: nitropod.LicenseDir + "/", Source: "/s"}}, want: "/s/license.yaml", ok: true},
		{name: "file", mounts: []specs.Mount{{Destination: nitropod.LicensePath, Source: "/f/license.yaml"}}, want: "/f/license.yaml", ok: true},
		{name: "last wins", mounts: []specs.Mount{{Destination: nitropod.LicenseDir, Source: "/a"}, {Destination: nitropod.LicenseDir, Source: "/b"}}, want: "/b/license.yaml", ok: true},
		{name: "user path not used", mounts: []specs.Mount{{Destination: "/opt/anjuna/license", Source: "/u"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := HostPath(&specs.Spec{Mounts: tc.mounts})
			if diff := cmp.Diff([2]any{tc.want, tc.ok}, [2]any{got, ok}); diff != "" {
				t.Errorf("HostPath (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPolicyCheck(t *testing.T) {
	k := testKey(1)
	dir := t.TempDir()
	validDir := filepath.Join(dir, "valid")
	expiredDir := filepath.Join(dir, "expired")
	for d, terms := range map[string]Terms{
		validDir:   {Licensee: "V", Issued: date("2026-01-01"), Expires: date("2027-01-01")},
		expiredDir: {Licensee: "E", Issued: date("2025-01-01"), Expires: date("2025-06-30")},
	} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, nitropod.LicenseSecretKey), mustIssue(t, terms, k), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	spec := func(src string) *specs.Spec {
		s := &specs.Spec{Annotations: map[string]string{nitropod.CRISandboxNamespace: "default"}}
		if src != "" {
			s.Mounts = []specs.Mount{{Destination: nitropod.LicenseDir, Source: src, Type: "bind"}}
		}
		return s
	}
	now := date("2026-03-01")
	tests := []struct {
		name    string
		enforce bool
		spec    *specs.Spec
		reason  Reason
		licence bool
		ignored bool
	}{
		{name: "valid enforced", enforce: true, spec: spec(validDir), licence: true},
		{name: "expired enforced", enforce: true, spec: spec(expiredDir), reason: ReasonExpired},
		{name: "no mount enforced", enforce: true, spec: spec(""), reason: ReasonMissing},
		{name: "mount without file enforced", enforce: true, spec: spec(filepath.Join(dir, "empty")), reason: ReasonMissing},
		{name: "no mount not enforced", spec: spec(""), ignored: true},
		{name: "expired not enforced", spec: spec(expiredDir), ignored: true},
		{name: "valid not enforced", spec: spec(validDir), licence: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ignored error
			p := Policy{Enforce: tc.enforce, Keys: []ed25519.PublicKey{pub(k)}, OnIgnored: func(err error) { ignored = err }}
			l, err := p.Check(tc.spec, ContextFromSpec(tc.spec), now)
			if got := ReasonOf(err); got != tc.reason {
				t.Fatalf("reason = %q (err %v), want %q", got, err, tc.reason)
			}
			if (l != nil) != tc.licence {
				t.Errorf("licence returned = %v, want %v", l != nil, tc.licence)
			}
			if (ignored != nil) != tc.ignored {
				t.Errorf("OnIgnored called = %v (%v), want %v", ignored != nil, ignored, tc.ignored)
			}
			if tc.reason == ReasonMissing && !strings.Contains(err.Error(), "kubectl create secret generic anjuna-license --from-file=license.yaml=") {
				t.Errorf("missing-licence message %q does not say how to fix it", err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	valid, err := Issue(baseTerms, testKey(1))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte("licensee: x\n"))
	f.Add([]byte("{}"))
	keys := []ed25519.PublicKey{pub(testKey(1))}
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := Verify(data, keys, date("2026-01-15"), Context{Namespace: "default"})
		if err == nil && l == nil {
			t.Fatal("no error and no licence")
		}
		if err != nil && ReasonOf(err) == "" {
			t.Fatalf("untyped error: %v", err)
		}
		if l != nil {
			// Anything accepted must re-verify from its canonical fields.
			if _, err := Parse(data); err != nil {
				t.Fatalf("accepted then failed to parse: %v", err)
			}
		}
	})
}

// TestGoldenLicenceStillValid: a licence issued before the cluster field
// existed (the golden file) verifies on a node that names a cluster.
func TestGoldenLicenceStillValid(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "example-license.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := Context{Namespace: "default", EnclavesInPod: 1, EnclavesOnNode: 1, Cluster: "c-1"}
	if _, err := Verify(b, []ed25519.PublicKey{pub(testKey(1))}, date("2026-01-15"), ctx); err != nil {
		t.Fatalf("licence without a cluster: %v", err)
	}
}

func TestClusterBinding(t *testing.T) {
	k := testKey(1)
	terms := Terms{Licensee: "Bound", Issued: date("2026-01-01"), Expires: date("2027-01-01"), Limits: Limits{Cluster: "0b9e6a1c-kube-system-uid"}}
	bound := mustIssue(t, terms, k)
	if !strings.Contains(string(bound), "cluster: 0b9e6a1c-kube-system-uid") {
		t.Fatalf("issued licence does not carry the cluster:\n%s", bound)
	}
	l, err := Parse(bound)
	if err != nil {
		t.Fatal(err)
	}
	if c := string(l.Canonical()); !strings.HasSuffix(c, `"namespaces":[],"cluster":"0b9e6a1c-kube-system-uid"}`) {
		t.Errorf("canonical form does not sign the cluster: %s", c)
	}
	keys := []ed25519.PublicKey{pub(k)}
	now := date("2026-03-01")
	if _, err := Verify(bound, keys, now, Context{Cluster: "0b9e6a1c-kube-system-uid"}); err != nil {
		t.Fatalf("same cluster: %v", err)
	}
	for _, tc := range []struct{ node, want string }{
		{"other-cluster", `bound to cluster "0b9e6a1c-kube-system-uid", this node is in cluster "other-cluster"`},
		{"", "set license.cluster_id"},
	} {
		_, err := Verify(bound, keys, now, Context{Cluster: tc.node})
		if ReasonOf(err) != ReasonCluster || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("node cluster %q: %v, want %s naming %q", tc.node, err, ReasonCluster, tc.want)
		}
	}
	// The binding is signed: removing or changing it breaks the signature.
	for _, edit := range []string{"", "  cluster: other-cluster\n"} {
		forged := strings.Replace(string(bound), "  cluster: 0b9e6a1c-kube-system-uid\n", edit, 1)
		if forged == string(bound) {
			t.Fatal("test did not edit the licence")
		}
		if _, err := Verify([]byte(forged), keys, now, Context{Cluster: "other-cluster"}); ReasonOf(err) != ReasonUntrusted {
			t.Errorf("edited cluster %q: %v, want %s", edit, err, ReasonUntrusted)
		}
	}
	// Policy.Cluster is what the shim sets from its config.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, nitropod.LicenseSecretKey), bound, 0o644); err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{Mounts: []specs.Mount{{Destination: nitropod.LicenseDir, Source: dir, Type: "bind"}}}
	for cluster, want := range map[string]Reason{"0b9e6a1c-kube-system-uid": "", "c-2": ReasonCluster} {
		_, err := Policy{Enforce: true, Keys: keys, Cluster: cluster}.Check(spec, Context{}, now)
		if ReasonOf(err) != want {
			t.Errorf("Policy{Cluster: %q}: %v, want reason %q", cluster, err, want)
		}
	}
}

// TestPolicyCheckHostileMount: what a Pod can put at the licence path in
// place of its licence is refused at once, with a clear reason.
func TestPolicyCheckHostileMount(t *testing.T) {
	k := testKey(1)
	base := t.TempDir()
	other := filepath.Join(base, "pod-b", "anjuna-license")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, nitropod.LicenseSecretKey), mustIssue(t, Terms{Licensee: "B", Issued: date("2026-01-01"), Expires: date("2027-01-01")}, k), 0o644); err != nil {
		t.Fatal(err)
	}
	vol := func(name string, plant func(p string) error) string {
		d := filepath.Join(base, "pod-a", name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := plant(filepath.Join(d, nitropod.LicenseSecretKey)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	cases := []struct {
		name, dir, want string
	}{
		{"zero", vol("zero", func(p string) error { return os.Symlink("/dev/zero", p) }), "outside the volume"},
		{"other pod", vol("other", func(p string) error { return os.Symlink("../../pod-b/anjuna-license/license.yaml", p) }), "outside the volume"},
		{"fifo", vol("fifo", func(p string) error { return syscall.Mkfifo(p, 0o600) }), "FIFO"},
		{"huge", vol("huge", func(p string) error { return os.WriteFile(p, make([]byte, MaxFileSize+1), 0o600) }), "larger than"},
		{"directory", vol("dir", func(p string) error { return os.Mkdir(p, 0o755) }), "directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := &specs.Spec{Mounts: []specs.Mount{{Destination: nitropod.LicenseDir, Source: tc.dir, Type: "bind"}}}
			t0 := time.Now()
			l, err := Policy{Enforce: true, Keys: []ed25519.PublicKey{pub(k)}}.Check(spec, Context{}, date("2026-03-01"))
			if d := time.Since(t0); d > time.Second {
				t.Errorf("took %v", d)
			}
			if l != nil || ReasonOf(err) != ReasonMalformed || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, %v; want a %s refusal naming %q", l, err, ReasonMalformed, tc.want)
			}
		})
	}
	// The Secret volume layout (license.yaml -> ..data/license.yaml) is read.
	d := filepath.Join(base, "pod-a", "secret")
	if err := os.MkdirAll(filepath.Join(d, "..2026"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "..2026", nitropod.LicenseSecretKey), mustIssue(t, Terms{Licensee: "A", Issued: date("2026-01-01"), Expires: date("2027-01-01")}, k), 0o644); err != nil {
		t.Fatal(err)
	}
	for target, name := range map[string]string{"..2026": "..data", "..data/" + nitropod.LicenseSecretKey: nitropod.LicenseSecretKey} {
		if err := os.Symlink(target, filepath.Join(d, name)); err != nil {
			t.Fatal(err)
		}
	}
	spec := &specs.Spec{Mounts: []specs.Mount{{Destination: nitropod.LicenseDir, Source: d, Type: "bind"}}}
	if l, err := (Policy{Enforce: true, Keys: []ed25519.PublicKey{pub(k)}}).Check(spec, Context{}, date("2026-03-01")); err != nil || l.Licensee != "A" {
		t.Fatalf("Secret volume layout: %v, %v", l, err)
	}
}
