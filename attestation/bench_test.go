package attestation

import "testing"

// BenchmarkVerify is the verifier's time per document: COSE signature,
// chain and validity, one PCR and the nonce.
func BenchmarkVerify(b *testing.B) {
	ca := newCA(b)
	s, err := ca.NewSigner("i-bench-enc1")
	if err != nil {
		b.Fatal(err)
	}
	doc := signed(b, s, []byte("n"))
	opts := VerifyOptions{Root: ca.Cert, PCRs: map[int][]byte{0: pcrs(0xab)[0]}, Nonce: []byte("n")}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Verify(doc, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSign is the emulated NSM's signing time per document (host side).
func BenchmarkSign(b *testing.B) {
	ca := newCA(b)
	s, err := ca.NewSigner("i-bench-enc1")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		signed(b, s, []byte("n"))
	}
}
