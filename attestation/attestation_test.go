package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
)

func TestAWSRoot(t *testing.T) {
	c, err := AWSRoot()
	if err != nil {
		t.Fatal(err)
	}
	if Fingerprint(c) != "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b" {
		t.Errorf("fingerprint %s", Fingerprint(c))
	}
	if c.Subject.CommonName != "aws.nitro-enclaves" || !c.IsCA {
		t.Errorf("subject %s", c.Subject)
	}
}

func newCA(t testing.TB) *EmulationCA {
	t.Helper()
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func pcrs(v byte) PCRs {
	p := PCRs{}
	for i := range AttestedPCRs {
		p[i] = make([]byte, PCRSize)
	}
	p[0] = bytes.Repeat([]byte{v}, PCRSize)
	return p
}

func signed(t testing.TB, s *Signer, nonce []byte) []byte {
	t.Helper()
	doc, err := s.Sign(&Document{PCRs: pcrs(0xab), Nonce: nonce, UserData: []byte("ud")})
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestSignVerify(t *testing.T) {
	ca := newCA(t)
	s, err := ca.NewSigner("i-test-enc1")
	if err != nil {
		t.Fatal(err)
	}
	doc := signed(t, s, []byte("n"))
	d, err := Verify(doc, VerifyOptions{Root: ca.Cert, PCRs: map[int][]byte{0: bytes.Repeat([]byte{0xab}, PCRSize)}, Nonce: []byte("n")})
	if err != nil {
		t.Fatal(err)
	}
	if d.ModuleID != "i-test-enc1" || d.Digest != "SHA384" || string(d.UserData) != "ud" || d.PublicKey != nil || len(d.PCRs) != 16 {
		t.Errorf("payload %+v", d)
	}
	if !strings.Contains(ca.Cert.Subject.String(), EmulationSubjectMarker) {
		t.Errorf("emulation root subject %q does not say %q", ca.Cert.Subject, EmulationSubjectMarker)
	}

	// The payload's keys are in the NSM API's order, absent options null.
	p, err := Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	dec := cbor.NewDecoder(bytes.NewReader(p.payload))
	var raw map[string]cbor.RawMessage
	if err := dec.Decode(&raw); err != nil {
		t.Fatal(err)
	}
	want := []string{"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce"}
	rest := p.payload[1:] // map head of 9 entries
	for range want {
		var k string
		rest, err = cbor.UnmarshalFirst(rest, &k)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		var skip cbor.RawMessage
		if rest, err = cbor.UnmarshalFirst(rest, &skip); err != nil {
			t.Fatal(err)
		}
		if k == "public_key" && !bytes.Equal(skip, []byte{0xf6}) {
			t.Errorf("absent public_key is %x, want null", []byte(skip))
		}
		if k == "pcrs" && !bytes.HasPrefix(skip, []byte{0xb0, 0x00, 0x58, 0x30}) {
			t.Errorf("pcrs do not start with key 0: %x", []byte(skip[:4]))
		}
	}
	if strings.Join(keys, ",") != strings.Join(want, ",") {
		t.Errorf("payload keys %v, want %v", keys, want)
	}
}

func checkOf(err error) string {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Check
	}
	return ""
}

// Each bad document is refused by the check that names its fault.
func TestVerifyFailures(t *testing.T) {
	ca := newCA(t)
	s, err := ca.NewSigner("i-test-enc1")
	if err != nil {
		t.Fatal(err)
	}
	doc := signed(t, s, []byte("n"))
	other := newCA(t)

	if _, err := Verify(doc, VerifyOptions{}); checkOf(err) != CheckChain || !strings.Contains(err.Error(), "aws.nitro-enclaves") {
		t.Errorf("AWS root (default): %v", err)
	}
	if _, err := Verify(doc, VerifyOptions{Root: other.Cert}); checkOf(err) != CheckChain {
		t.Errorf("another node's root: %v", err)
	}
	if _, err := Verify(doc, VerifyOptions{Root: ca.Cert, Now: time.Now().Add(4 * time.Hour)}); checkOf(err) != CheckExpiry {
		t.Errorf("4 h later: %v", err)
	}
	if _, err := Verify(doc, VerifyOptions{Root: ca.Cert, PCRs: map[int][]byte{0: make([]byte, 48)}}); checkOf(err) != CheckPCR || !strings.Contains(err.Error(), "PCR0") {
		t.Errorf("PCR0 mismatch: %v", err)
	}
	if _, err := Verify(doc, VerifyOptions{Root: ca.Cert, PCRs: map[int][]byte{20: make([]byte, 48)}}); checkOf(err) != CheckPCR {
		t.Errorf("missing PCR20: %v", err)
	}
	if _, err := Verify(doc, VerifyOptions{Root: ca.Cert, Nonce: []byte("other")}); checkOf(err) != CheckNonce {
		t.Errorf("nonce mismatch: %v", err)
	}
	// Every single flipped byte is refused (signature or format).
	for i := range doc {
		bad := bytes.Clone(doc)
		bad[i] ^= 0x01
		if _, err := Verify(bad, VerifyOptions{Root: ca.Cert}); err == nil {
			t.Fatalf("flipping byte %d of %d still verifies", i, len(doc))
		}
	}
	// A payload signed by a key that is not the certificate's.
	var msg coseSign1
	if err := cbor.Unmarshal(doc, &msg); err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p, _ := Parse(doc)
	forged, err := Sign(p.Document, k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(forged, VerifyOptions{Root: ca.Cert}); checkOf(err) != CheckSignature {
		t.Errorf("forged signature: %v", err)
	}
	// Structural limits.
	for name, mut := range map[string]func(d *Document){
		"user_data 513": func(d *Document) { d.UserData = make([]byte, 513) },
		"no module_id":  func(d *Document) { d.ModuleID = "" },
		"digest SHA256": func(d *Document) { d.Digest = "SHA256" },
		"short PCR":     func(d *Document) { d.PCRs[3] = []byte{1} },
		"no cabundle":   func(d *Document) { d.CABundle = nil },
	} {
		p, _ := Parse(doc)
		mut(p.Document)
		b, err := Sign(p.Document, k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(b, VerifyOptions{Root: ca.Cert}); checkOf(err) != CheckFormat {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := Verify(nil, VerifyOptions{}); checkOf(err) != CheckFormat {
		t.Errorf("empty: %v", err)
	}
	// A tagged COSE_Sign1 (tag 18) is the same document.
	tagged, _ := cbor.Marshal(cbor.RawTag{Number: 18, Content: doc})
	if _, err := Verify(tagged, VerifyOptions{Root: ca.Cert}); err != nil {
		t.Errorf("tagged: %v", err)
	}
}

func TestSignerRenews(t *testing.T) {
	ca := newCA(t)
	s, err := ca.NewSigner("m")
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(leafLifetime)
	s.now = func() time.Time { return later }
	doc := signed(t, s, nil)
	if _, err := Verify(doc, VerifyOptions{Root: ca.Cert, Now: later}); err != nil {
		t.Errorf("after renewal: %v", err)
	}
}

func TestCAFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	var wg sync.WaitGroup
	cas := make([]*EmulationCA, 4)
	errs := make([]error, 4)
	for i := range cas {
		wg.Add(1)
		go func() { defer wg.Done(); cas[i], errs[i] = LoadOrCreateCA(dir) }()
	}
	wg.Wait()
	for i := range cas {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !cas[i].Cert.Equal(cas[0].Cert) {
			t.Errorf("concurrent creators got different CAs")
		}
	}
	fi, err := os.Stat(filepath.Join(dir, EmulationRootKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v %v, want 0600", fi.Mode(), err)
	}
	di, _ := os.Stat(dir)
	if di.Mode().Perm() != 0o700 {
		t.Errorf("CA directory mode %v, want 0700", di.Mode())
	}
	if err := os.Chmod(filepath.Join(dir, EmulationRootKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable key: %v", err)
	}
}

func TestParsePCRFlag(t *testing.T) {
	h := strings.Repeat("ab", 48)
	if n, b, err := ParsePCRFlag("8=" + h); err != nil || n != 8 || len(b) != 48 {
		t.Errorf("8=…: %d %d %v", n, len(b), err)
	}
	for _, bad := range []string{"8", "x=" + h, "32=" + h, "-1=" + h, "0=abc", "08=" + h} {
		if _, _, err := ParsePCRFlag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// The parser and verifier never panic on hostile documents.
func FuzzVerify(f *testing.F) {
	ca := newCA(f)
	s, err := ca.NewSigner("m")
	if err != nil {
		f.Fatal(err)
	}
	doc := signed(f, s, []byte("n"))
	f.Add(doc)
	f.Add([]byte{0xd2, 0x84, 0x40, 0xa0, 0x40, 0x40})
	f.Add([]byte{0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0xf6, 0x58, 0x60})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Verify(b, VerifyOptions{Root: ca.Cert})
		if err == nil && d == nil {
			t.Fatal("no error and no document")
		}
	})
}
