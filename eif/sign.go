package eif

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"math/big"

	"github.com/fxamacker/cbor/v2"
)

// COSE algorithm identifiers (RFC 8152 §8.1) for the curves nitro-cli signs with.
const (
	AlgES256 = -7
	AlgES384 = -35
	AlgES512 = -36
)

// Signer signs an EIF as `nitro-cli build-enclave --signing-certificate
// --private-key` does: a COSE_Sign1 over PCR0 made with an EC key whose curve
// selects ES256, ES384 or ES512.
type Signer struct {
	certPEM []byte
	cert    *x509.Certificate
	key     crypto.Signer
	alg     int
	pcr8    string
}

// NewSigner makes a Signer from a certificate (PEM, or DER which is stored as
// PEM) and a private key (PEM: "EC PRIVATE KEY" or PKCS#8), or any
// crypto.Signer with an ECDSA public key (e.g. a KMS key) via NewSignerFromKey.
func NewSigner(certFile, keyFile []byte) (*Signer, error) {
	blk, _ := pem.Decode(keyFile)
	if blk == nil {
		return nil, errors.New("parsing signing key: no PEM block found (want an EC private key in PEM)")
	}
	var key crypto.Signer
	switch blk.Type {
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing signing key: %w", err)
		}
		key = k
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing signing key: %w", err)
		}
		s, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("parsing signing key: %T is not an EC key (nitro enclaves accept EC keys only)", k)
		}
		key = s
	default:
		return nil, fmt.Errorf("parsing signing key: PEM block %q is not an EC private key", blk.Type)
	}
	return NewSignerFromKey(certFile, key)
}

// NewSignerFromKey makes a Signer from a certificate (PEM or DER) and a key.
func NewSignerFromKey(certFile []byte, key crypto.Signer) (*Signer, error) {
	cert, err := parseCertificate(certFile)
	if err != nil {
		return nil, err
	}
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("signing key is %T, nitro enclaves accept EC keys only", key.Public())
	}
	alg, err := algForCurve(pub.Curve)
	if err != nil {
		return nil, err
	}
	certPub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !certPub.Equal(pub) {
		return nil, errors.New("signing certificate does not match the private key")
	}
	certPEM := certFile
	if blk, _ := pem.Decode(certFile); blk == nil {
		certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	}
	return &Signer{certPEM: certPEM, cert: cert, key: key, alg: alg, pcr8: PCRHex(cert.Raw)}, nil
}

// PCR8 is the measurement of the signing certificate.
func (s *Signer) PCR8() string { return s.pcr8 }

func algForCurve(c elliptic.Curve) (int, error) {
	switch c {
	case elliptic.P256():
		return AlgES256, nil
	case elliptic.P384():
		return AlgES384, nil
	case elliptic.P521():
		return AlgES512, nil
	}
	return 0, fmt.Errorf("unsupported EC curve %s (use P-256, P-384 or P-521)", c.Params().Name)
}

func algHash(alg int) (hash.Hash, crypto.Hash, int, error) {
	switch alg {
	case AlgES256:
		return sha256.New(), crypto.SHA256, 32, nil
	case AlgES384:
		return sha512.New384(), crypto.SHA384, 48, nil
	case AlgES512:
		return sha512.New(), crypto.SHA512, 66, nil
	}
	return nil, 0, 0, fmt.Errorf("unsupported COSE algorithm %d", alg)
}

// uints is a byte vector as serde_cbor writes Vec<u8>: an array of unsigned
// integers, not a byte string.
type uints []byte

func (u uints) MarshalCBOR() ([]byte, error) {
	ints := make([]uint64, len(u))
	for i, b := range u {
		ints[i] = uint64(b)
	}
	return cbor.Marshal(ints)
}

func (u *uints) UnmarshalCBOR(b []byte) error {
	var ints []uint64
	if err := cbor.Unmarshal(b, &ints); err != nil {
		return err
	}
	out := make([]byte, len(ints))
	for i, v := range ints {
		if v > 255 {
			return fmt.Errorf("byte vector element %d is %d, above 255", i, v)
		}
		out[i] = byte(v)
	}
	*u = out
	return nil
}

// eifSignature is one element of the signature section (AWS's EifSignature).
type eifSignature struct {
	SigningCertificate uints `cbor:"signing_certificate"`
	Signature          uints `cbor:"signature"`
}

// pcrInfo is the signed payload (AWS's PcrInfo).
type pcrInfo struct {
	RegisterIndex int   `cbor:"register_index"`
	RegisterValue uints `cbor:"register_value"`
}

// coseSign1 is an untagged COSE_Sign1 message.
type coseSign1 struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected map[int]any
	Payload     []byte
	Signature   []byte
}

func sigStructure(protected, payload []byte) ([]byte, error) {
	return cbor.Marshal([]any{"Signature1", protected, []byte{}, payload})
}

// signatureSection returns the signature section's data for pcr0.
func (s *Signer) signatureSection(pcr0 []byte) ([]byte, error) {
	payload, err := cbor.Marshal(pcrInfo{RegisterIndex: 0, RegisterValue: pcr0})
	if err != nil {
		return nil, fmt.Errorf("encoding eif signature payload: %w", err)
	}
	protected, err := cbor.Marshal(map[int]int{1: s.alg})
	if err != nil {
		return nil, fmt.Errorf("encoding eif signature header: %w", err)
	}
	tbs, err := sigStructure(protected, payload)
	if err != nil {
		return nil, fmt.Errorf("encoding eif signature structure: %w", err)
	}
	h, ch, size, err := algHash(s.alg)
	if err != nil {
		return nil, err
	}
	h.Write(tbs)
	der, err := s.key.Sign(rand.Reader, h.Sum(nil), ch)
	if err != nil {
		return nil, fmt.Errorf("signing eif: %w", err)
	}
	var esig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &esig); err != nil {
		return nil, fmt.Errorf("signing eif: decoding ECDSA signature: %w", err)
	}
	raw := make([]byte, 2*size)
	esig.R.FillBytes(raw[:size])
	esig.S.FillBytes(raw[size:])
	msg, err := cbor.Marshal(coseSign1{Protected: protected, Unprotected: map[int]any{}, Payload: payload, Signature: raw})
	if err != nil {
		return nil, fmt.Errorf("encoding eif signature: %w", err)
	}
	sec, err := cbor.Marshal([]eifSignature{{SigningCertificate: s.certPEM, Signature: msg}})
	if err != nil {
		return nil, fmt.Errorf("encoding eif signature section: %w", err)
	}
	if len(sec) > MaxSignatureSize {
		return nil, fmt.Errorf("eif signature section is %d bytes, nitro-cli accepts at most %d (use a smaller certificate)", len(sec), MaxSignatureSize)
	}
	return sec, nil
}

// SignatureInfo is what a signature section says.
type SignatureInfo struct {
	// Certificate is the signing certificate.
	Certificate *x509.Certificate
	// PCR8 is its measurement.
	PCR8 string
	// Algorithm is the COSE algorithm (AlgES256, AlgES384 or AlgES512).
	Algorithm int
	// RegisterIndex and RegisterValue are the signed PCR (index 0 and PCR0).
	RegisterIndex int
	RegisterValue []byte
}

// VerifySignature decodes a signature section and checks its COSE_Sign1
// signature with the certificate it carries, and that it signs pcr0 (raw
// bytes). The certificate's validity period is not checked here (nitro-cli
// checks it when launching). Failures wrap ErrSignature.
func VerifySignature(section, pcr0 []byte) (*SignatureInfo, error) {
	var sigs []eifSignature
	if err := cbor.Unmarshal(section, &sigs); err != nil {
		return nil, fmt.Errorf("%w: decoding signature section: %w", ErrSignature, err)
	}
	if len(sigs) != 1 {
		return nil, fmt.Errorf("%w: signature section holds %d signatures, want 1", ErrSignature, len(sigs))
	}
	cert, err := parseCertificate(sigs[0].SigningCertificate)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	info := &SignatureInfo{Certificate: cert, PCR8: PCRHex(cert.Raw)}
	var msg coseSign1
	if err := cbor.Unmarshal(sigs[0].Signature, &msg); err != nil {
		return info, fmt.Errorf("%w: decoding COSE_Sign1: %w", ErrSignature, err)
	}
	var prot map[int]int
	if err := cbor.Unmarshal(msg.Protected, &prot); err != nil {
		return info, fmt.Errorf("%w: decoding COSE protected header: %w", ErrSignature, err)
	}
	info.Algorithm = prot[1]
	h, _, size, err := algHash(info.Algorithm)
	if err != nil {
		return info, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return info, fmt.Errorf("%w: certificate key is %T, want EC", ErrSignature, cert.PublicKey)
	}
	if want, _ := algForCurve(pub.Curve); want != info.Algorithm {
		return info, fmt.Errorf("%w: algorithm %d does not match the certificate's curve %s", ErrSignature, info.Algorithm, pub.Curve.Params().Name)
	}
	if len(msg.Signature) != 2*size {
		return info, fmt.Errorf("%w: signature is %d bytes, want %d", ErrSignature, len(msg.Signature), 2*size)
	}
	tbs, err := sigStructure(msg.Protected, msg.Payload)
	if err != nil {
		return info, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	h.Write(tbs)
	r := new(big.Int).SetBytes(msg.Signature[:size])
	s := new(big.Int).SetBytes(msg.Signature[size:])
	if !ecdsa.Verify(pub, h.Sum(nil), r, s) {
		return info, fmt.Errorf("%w: COSE_Sign1 signature does not verify with the signing certificate", ErrSignature)
	}
	var p pcrInfo
	if err := cbor.Unmarshal(msg.Payload, &p); err != nil {
		return info, fmt.Errorf("%w: decoding signed payload: %w", ErrSignature, err)
	}
	info.RegisterIndex, info.RegisterValue = p.RegisterIndex, p.RegisterValue
	if p.RegisterIndex != 0 || !bytes.Equal(p.RegisterValue, pcr0) {
		return info, fmt.Errorf("%w: the signature covers PCR%d %x, the image's PCR0 is %x", ErrSignature, p.RegisterIndex, []byte(p.RegisterValue), pcr0)
	}
	return info, nil
}
