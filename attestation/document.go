package attestation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"fmt"
	"math/big"

	"github.com/fxamacker/cbor/v2"
)

// Limits of the NSM API (the attestation process description of
// aws-nitro-enclaves-nsm-api).
const (
	MaxUserData  = 512
	MaxNonce     = 512
	MaxPublicKey = 1024
	// MaxCertificate bounds the certificate and each cabundle entry.
	MaxCertificate = 1024
	// MaxPCRs is how many PCRs a document may hold.
	MaxPCRs = 32
	// MaxDocument bounds a whole COSE_Sign1 document; the payload is at
	// most 16 KiB and the rest is small.
	MaxDocument = 20 << 10
	// MaxPayload bounds the COSE payload.
	MaxPayload = 16 << 10
	// PCRSize is the size of a SHA-384 PCR.
	PCRSize = 48
	// AlgES384 is the COSE algorithm of every attestation document.
	AlgES384 = -35
	// DigestSHA384 is the digest every Nitro document names.
	DigestSHA384 = "SHA384"
	// AttestedPCRs is how many PCRs (0 … AttestedPCRs-1) a document carries.
	AttestedPCRs = 16
)

// Document is the payload of an attestation document.
type Document struct {
	ModuleID    string   `cbor:"module_id" json:"module_id"`
	Digest      string   `cbor:"digest" json:"digest"`
	Timestamp   uint64   `cbor:"timestamp" json:"timestamp"`
	PCRs        PCRs     `cbor:"pcrs" json:"pcrs"`
	Certificate []byte   `cbor:"certificate" json:"certificate"`
	CABundle    [][]byte `cbor:"cabundle" json:"cabundle"`
	PublicKey   []byte   `cbor:"public_key" json:"public_key"`
	UserData    []byte   `cbor:"user_data" json:"user_data"`
	Nonce       []byte   `cbor:"nonce" json:"nonce"`
}

// PCRs maps a PCR index to its value. It encodes with ascending keys, as
// serde's BTreeMap does.
type PCRs map[int][]byte

var sortedEnc = func() cbor.EncMode {
	em, err := cbor.EncOptions{Sort: cbor.SortCoreDeterministic}.EncMode()
	if err != nil {
		panic(err) // constant options
	}
	return em
}()

// MarshalCBOR encodes the map with ascending keys.
func (p PCRs) MarshalCBOR() ([]byte, error) {
	return sortedEnc.Marshal(map[int][]byte(p))
}

// decMode bounds what a hostile document may make the decoder allocate and
// refuses duplicate map keys (a second "nonce" must not hide the first).
var decMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  8,
		MaxArrayElements: 64,
		MaxMapPairs:      64,
		IndefLength:      cbor.IndefLengthForbidden,
	}.DecMode()
	if err != nil {
		panic(err) // constant options
	}
	return dm
}()

// coseSign1 is a COSE_Sign1 message (RFC 9052 §4.2).
type coseSign1 struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected cbor.RawMessage
	Payload     []byte
	Signature   []byte
}

// coseTag is the CBOR tag of a tagged COSE_Sign1; NSM documents are untagged.
const coseTag = 18

func sigStructure(protected, payload []byte) ([]byte, error) {
	return cbor.Marshal([]any{"Signature1", protected, []byte{}, payload})
}

var protectedES384 = func() []byte {
	b, err := cbor.Marshal(map[int]int{1: AlgES384})
	if err != nil {
		panic(err)
	}
	return b
}()

// Sign encodes d and signs it with key (P-384) as an untagged COSE_Sign1
// with ES384, as the NSM does. d must already carry its certificate and
// cabundle.
func Sign(d *Document, key *ecdsa.PrivateKey) ([]byte, error) {
	if key.Curve != elliptic.P384() {
		return nil, fmt.Errorf("attestation signing key is on %s, want P-384", key.Curve.Params().Name)
	}
	payload, err := cbor.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encoding attestation payload: %w", err)
	}
	tbs, err := sigStructure(protectedES384, payload)
	if err != nil {
		return nil, fmt.Errorf("encoding COSE Sig_structure: %w", err)
	}
	h := sha512.Sum384(tbs)
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		return nil, fmt.Errorf("signing attestation document: %w", err)
	}
	sig := make([]byte, 2*PCRSize)
	r.FillBytes(sig[:PCRSize])
	s.FillBytes(sig[PCRSize:])
	msg, err := cbor.Marshal(coseSign1{Protected: protectedES384, Unprotected: cbor.RawMessage{0xa0}, Payload: payload, Signature: sig})
	if err != nil {
		return nil, fmt.Errorf("encoding COSE_Sign1: %w", err)
	}
	return msg, nil
}

// Parsed is a decoded, not yet verified, attestation document.
type Parsed struct {
	Document  *Document
	Algorithm int
	protected []byte
	payload   []byte
	signature []byte
}

// Parse decodes a COSE_Sign1 attestation document and its payload and checks
// the NSM API's structural limits; it does not check the signature or the
// certificates (Verify does).
func Parse(doc []byte) (*Parsed, error) {
	if len(doc) == 0 {
		return nil, errors.New("attestation document is empty")
	}
	if len(doc) > MaxDocument {
		return nil, fmt.Errorf("attestation document is %d bytes, the NSM produces at most %d", len(doc), MaxDocument)
	}
	raw := doc
	var tag cbor.RawTag
	if doc[0]>>5 == 6 { // a tagged COSE_Sign1 (tag 18) is accepted too
		if err := decMode.Unmarshal(doc, &tag); err != nil {
			return nil, fmt.Errorf("decoding COSE_Sign1 tag: %w", err)
		}
		if tag.Number != coseTag {
			return nil, fmt.Errorf("attestation document has CBOR tag %d, want a COSE_Sign1 (untagged or tag 18)", tag.Number)
		}
		raw = tag.Content
	}
	var msg coseSign1
	if err := decMode.Unmarshal(raw, &msg); err != nil {
		return nil, fmt.Errorf("decoding COSE_Sign1: %w", err)
	}
	var prot map[int]any
	if err := decMode.Unmarshal(msg.Protected, &prot); err != nil {
		return nil, fmt.Errorf("decoding COSE protected header: %w", err)
	}
	alg, ok := prot[1].(int64)
	if !ok {
		return nil, fmt.Errorf("COSE protected header has no integer algorithm (label 1): %v", prot[1])
	}
	if alg != AlgES384 {
		return nil, fmt.Errorf("COSE algorithm is %d, Nitro documents use ES384 (%d)", alg, AlgES384)
	}
	if len(msg.Payload) == 0 || len(msg.Payload) > MaxPayload {
		return nil, fmt.Errorf("COSE payload is %d bytes, want 1…%d", len(msg.Payload), MaxPayload)
	}
	if len(msg.Signature) != 2*PCRSize {
		return nil, fmt.Errorf("COSE signature is %d bytes, ES384 signatures are %d", len(msg.Signature), 2*PCRSize)
	}
	d := new(Document)
	if err := decMode.Unmarshal(msg.Payload, d); err != nil {
		return nil, fmt.Errorf("decoding attestation payload: %w", err)
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	return &Parsed{Document: d, Algorithm: int(alg), protected: msg.Protected, payload: msg.Payload, signature: msg.Signature}, nil
}

// check applies the NSM API's field rules.
func (d *Document) check() error {
	switch {
	case d.ModuleID == "":
		return errors.New("attestation payload has no module_id")
	case d.Digest != DigestSHA384:
		return fmt.Errorf("attestation payload digest is %q, want %q", d.Digest, DigestSHA384)
	case d.Timestamp == 0:
		return errors.New("attestation payload has no timestamp")
	case len(d.PCRs) == 0 || len(d.PCRs) > MaxPCRs:
		return fmt.Errorf("attestation payload has %d PCRs, want 1…%d", len(d.PCRs), MaxPCRs)
	case len(d.Certificate) == 0 || len(d.Certificate) > MaxCertificate:
		return fmt.Errorf("attestation certificate is %d bytes, want 1…%d", len(d.Certificate), MaxCertificate)
	case len(d.CABundle) == 0:
		return errors.New("attestation payload has an empty cabundle")
	case len(d.PublicKey) > MaxPublicKey:
		return fmt.Errorf("attestation public_key is %d bytes, at most %d", len(d.PublicKey), MaxPublicKey)
	case len(d.UserData) > MaxUserData:
		return fmt.Errorf("attestation user_data is %d bytes, at most %d", len(d.UserData), MaxUserData)
	case len(d.Nonce) > MaxNonce:
		return fmt.Errorf("attestation nonce is %d bytes, at most %d", len(d.Nonce), MaxNonce)
	}
	for i, v := range d.PCRs {
		if i < 0 || i >= MaxPCRs {
			return fmt.Errorf("attestation payload has PCR index %d, want 0…%d", i, MaxPCRs-1)
		}
		if len(v) != 32 && len(v) != 48 && len(v) != 64 {
			return fmt.Errorf("attestation PCR%d is %d bytes, want 32, 48 or 64", i, len(v))
		}
	}
	for i, c := range d.CABundle {
		if len(c) == 0 || len(c) > MaxCertificate {
			return fmt.Errorf("attestation cabundle entry %d is %d bytes, want 1…%d", i, len(c), MaxCertificate)
		}
	}
	return nil
}

// verifySignature checks the COSE signature with pub.
func (p *Parsed) verifySignature(pub *ecdsa.PublicKey) error {
	if pub.Curve != elliptic.P384() {
		return fmt.Errorf("signing certificate key is on %s, ES384 needs P-384", pub.Curve.Params().Name)
	}
	tbs, err := sigStructure(p.protected, p.payload)
	if err != nil {
		return err
	}
	h := sha512.Sum384(tbs)
	r := new(big.Int).SetBytes(p.signature[:PCRSize])
	s := new(big.Int).SetBytes(p.signature[PCRSize:])
	if !ecdsa.Verify(pub, h[:], r, s) {
		return errors.New("the COSE_Sign1 signature does not verify with the document's signing certificate")
	}
	return nil
}
