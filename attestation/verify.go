package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"crypto/x509"
)

// awsRootPEM is AWS's Nitro Enclaves root certificate (G1), as AWS publishes
// it; AWSRootFingerprint pins it.
//
//go:embed aws_root_g1.pem
var awsRootPEM []byte

// AWSRootFingerprint is the SHA-256 fingerprint of AWS's Nitro Enclaves root
// G1 certificate, as AWS's documentation ("Verifying the root of trust")
// publishes it.
const AWSRootFingerprint = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

// AWSRoot returns AWS's Nitro Enclaves root certificate, checked against
// AWSRootFingerprint.
func AWSRoot() (*x509.Certificate, error) {
	c, err := ParseRootPEM(awsRootPEM)
	if err != nil {
		return nil, fmt.Errorf("embedded AWS root: %w", err)
	}
	if got := Fingerprint(c); got != AWSRootFingerprint {
		return nil, fmt.Errorf("embedded AWS root has fingerprint %s, want %s", got, AWSRootFingerprint)
	}
	return c, nil
}

// AWSRootPEM returns the embedded PEM of AWS's root.
func AWSRootPEM() []byte { return bytes.Clone(awsRootPEM) }

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER.
func Fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

// ParseRootPEM reads the first certificate of a PEM file.
func ParseRootPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block found (pass the root certificate in PEM form)")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing root certificate: %w", err)
	}
	return c, nil
}

// Checks named by VerifyError.
const (
	CheckFormat    = "format"
	CheckSignature = "signature"
	CheckChain     = "certificate chain"
	CheckExpiry    = "certificate validity"
	CheckPCR       = "pcr"
	CheckNonce     = "nonce"
)

// VerifyError names the check a document failed.
type VerifyError struct {
	Check string
	Err   error
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("attestation document rejected: %s check failed: %v", e.Check, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// VerifyOptions are what the relying party expects.
type VerifyOptions struct {
	// Root is the trusted root; nil is AWS's Nitro Enclaves root G1.
	Root *x509.Certificate
	// Now is the time certificates must be valid at; zero is time.Now().
	Now time.Time
	// PCRs are the expected PCR values by index (48 bytes each).
	PCRs map[int][]byte
	// Nonce, when set, must equal the document's nonce.
	Nonce []byte
}

// Verify parses doc and checks it against opts; see the package doc for the
// checks. On success it returns the payload.
func Verify(doc []byte, opts VerifyOptions) (*Document, error) {
	p, err := Parse(doc)
	if err != nil {
		return nil, &VerifyError{CheckFormat, err}
	}
	d := p.Document
	leaf, err := x509.ParseCertificate(d.Certificate)
	if err != nil {
		return d, &VerifyError{CheckFormat, fmt.Errorf("parsing the signing certificate: %w", err)}
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return d, &VerifyError{CheckSignature, fmt.Errorf("signing certificate key is %T, want ECDSA P-384", leaf.PublicKey)}
	}
	if err := p.verifySignature(pub); err != nil {
		return d, &VerifyError{CheckSignature, err}
	}
	root := opts.Root
	if root == nil {
		if root, err = AWSRoot(); err != nil {
			return d, &VerifyError{CheckChain, err}
		}
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	bundle := make([]*x509.Certificate, len(d.CABundle))
	for i, b := range d.CABundle {
		if bundle[i], err = x509.ParseCertificate(b); err != nil {
			return d, &VerifyError{CheckFormat, fmt.Errorf("parsing cabundle entry %d: %w", i, err)}
		}
	}
	if !bundle[0].Equal(root) {
		return d, &VerifyError{CheckChain, fmt.Errorf("the document's root (cabundle[0], %q, fingerprint %s) is not the trusted root (%q, fingerprint %s)",
			bundle[0].Subject.String(), Fingerprint(bundle[0]), root.Subject.String(), Fingerprint(root))}
	}
	for _, c := range append([]*x509.Certificate{leaf}, bundle...) {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return d, &VerifyError{CheckExpiry, fmt.Errorf("certificate %q is valid from %s to %s, not at %s",
				c.Subject.String(), c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))}
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range bundle[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return d, &VerifyError{CheckChain, err}
	}
	idx := make([]int, 0, len(opts.PCRs))
	for i := range opts.PCRs {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		got, ok := d.PCRs[i]
		if !ok {
			return d, &VerifyError{CheckPCR, fmt.Errorf("the document has no PCR%d", i)}
		}
		if !bytes.Equal(got, opts.PCRs[i]) {
			return d, &VerifyError{CheckPCR, fmt.Errorf("PCR%d is %x, expected %x", i, got, opts.PCRs[i])}
		}
	}
	if opts.Nonce != nil && !bytes.Equal(d.Nonce, opts.Nonce) {
		return d, &VerifyError{CheckNonce, fmt.Errorf("nonce is %x, expected %x", d.Nonce, opts.Nonce)}
	}
	return d, nil
}

// ParsePCRFlag reads "N=HEX" (a PCR index and its hex value).
func ParsePCRFlag(s string) (int, []byte, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return 0, nil, fmt.Errorf("PCR %q is not N=HEX (e.g. 0=%s…)", s, strings.Repeat("ab", 4))
	}
	var n int
	if _, err := fmt.Sscanf(k, "%d", &n); err != nil || n < 0 || n >= MaxPCRs || fmt.Sprint(n) != k {
		return 0, nil, fmt.Errorf("PCR index %q is not a number in 0…%d", k, MaxPCRs-1)
	}
	b, err := hex.DecodeString(strings.TrimSpace(v))
	if err != nil || len(b) != PCRSize {
		return 0, nil, fmt.Errorf("PCR%d value %q is not %d bytes of hex (SHA-384)", n, v, PCRSize)
	}
	return n, b, nil
}
