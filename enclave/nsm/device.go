package nsm

import (
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/nitropod/nitropod/attestation"
)

// Signer signs attestation documents (attestation.Signer in emulation).
type Signer interface {
	Sign(d *attestation.Document) ([]byte, error)
}

// Config configures a Device.
type Config struct {
	// ModuleID is the enclave's module ID in DescribeNSM and documents.
	ModuleID string
	// PCRs are the boot measurements by index (PCR0, 1, 2 and 8 of the
	// EIF); indices must be below LockedPCRs and values PCRSize bytes.
	PCRs map[int][]byte
	// Signer signs documents; nil makes Attestation fail with InternalError.
	Signer Signer
	// Rand is GetRandom's source; nil is crypto/rand.
	Rand io.Reader
}

// Device is an emulated NSM; its methods are safe for concurrent use.
type Device struct {
	moduleID string
	signer   Signer
	rand     io.Reader

	mu     sync.Mutex
	pcrs   [NumPCRs][PCRSize]byte
	locked [NumPCRs]bool
}

// NewDevice returns a device with cfg's boot PCRs and PCRs 0–15 locked.
func NewDevice(cfg Config) (*Device, error) {
	d := &Device{moduleID: cfg.ModuleID, signer: cfg.Signer, rand: cfg.Rand}
	if d.rand == nil {
		d.rand = rand.Reader
	}
	for i, v := range cfg.PCRs {
		if i < 0 || i >= LockedPCRs {
			return nil, fmt.Errorf("boot PCR index %d is outside 0…%d", i, LockedPCRs-1)
		}
		if len(v) != PCRSize {
			return nil, fmt.Errorf("boot PCR%d is %d bytes, want %d", i, len(v), PCRSize)
		}
		copy(d.pcrs[i][:], v)
	}
	for i := range LockedPCRs {
		d.locked[i] = true
	}
	return d, nil
}

// BootPCRs converts an EIF's hex measurements (PCR0, PCR1, PCR2, PCR8; an
// empty value is skipped) to Config.PCRs.
func BootPCRs(hexPCRs map[int]string) (map[int][]byte, error) {
	out := map[int][]byte{}
	for i, h := range hexPCRs {
		if h == "" {
			continue
		}
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != PCRSize {
			return nil, fmt.Errorf("measurement PCR%d %q is not %d bytes of hex", i, h, PCRSize)
		}
		out[i] = b
	}
	return out, nil
}

// Handle answers one CBOR request with a CBOR response; it never fails.
func (d *Device) Handle(req []byte) []byte {
	r, err := DecodeRequest(req)
	if err != nil {
		var re *RequestError
		if errors.As(err, &re) {
			return ErrorResponse(re.Code)
		}
		return ErrorResponse(InvalidArgument)
	}
	resp := d.handle(r)
	b, err := EncodeResponse(resp)
	if err != nil {
		return ErrorResponse(InternalError)
	}
	return b
}

func errResp(c ErrorCode) Response { return Response{Kind: "Error", Error: c} }

func (d *Device) handle(r Request) Response {
	switch r.Kind {
	case KindDescribePCR:
		if int(r.Index) >= NumPCRs {
			return errResp(InvalidIndex)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		v := d.pcrs[r.Index]
		return Response{Kind: r.Kind, Lock: d.locked[r.Index], Data: v[:]}
	case KindExtendPCR:
		if int(r.Index) >= NumPCRs {
			return errResp(InvalidIndex)
		}
		if len(r.Data) > MaxExtendData {
			return errResp(InputTooLarge)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.locked[r.Index] {
			return errResp(ReadOnlyIndex)
		}
		h := sha512.New384()
		h.Write(d.pcrs[r.Index][:])
		h.Write(r.Data)
		copy(d.pcrs[r.Index][:], h.Sum(nil))
		v := d.pcrs[r.Index]
		return Response{Kind: r.Kind, Data: v[:]}
	case KindLockPCR:
		if int(r.Index) >= NumPCRs {
			return errResp(InvalidIndex)
		}
		if r.Index < LockedPCRs {
			return errResp(ReadOnlyIndex) // locked by the hypervisor
		}
		d.mu.Lock()
		d.locked[r.Index] = true
		d.mu.Unlock()
		return Response{Kind: r.Kind}
	case KindLockPCRs:
		if int(r.Range) > NumPCRs {
			return errResp(InvalidIndex)
		}
		d.mu.Lock()
		for i := range int(r.Range) {
			d.locked[i] = true
		}
		d.mu.Unlock()
		return Response{Kind: r.Kind}
	case KindDescribeNSM:
		d.mu.Lock()
		locked := []uint16{}
		for i, l := range d.locked {
			if l {
				locked = append(locked, uint16(i))
			}
		}
		d.mu.Unlock()
		return Response{Kind: r.Kind, Description: &Description{
			VersionMajor: Version[0], VersionMinor: Version[1], VersionPatch: Version[2],
			ModuleID: d.moduleID, MaxPCRs: NumPCRs, LockedPCRs: locked, Digest: attestation.DigestSHA384,
		}}
	case KindGetRandom:
		b := make([]byte, RandomSize)
		if _, err := io.ReadFull(d.rand, b); err != nil {
			return errResp(InternalError)
		}
		return Response{Kind: r.Kind, Random: b}
	case KindAttestation:
		switch {
		case len(r.UserData) > attestation.MaxUserData,
			len(r.Nonce) > attestation.MaxNonce,
			len(r.PublicKey) > attestation.MaxPublicKey:
			return errResp(InputTooLarge)
		}
		if d.signer == nil {
			return errResp(InternalError)
		}
		doc := &attestation.Document{PCRs: attestation.PCRs{}, UserData: r.UserData, Nonce: r.Nonce, PublicKey: r.PublicKey}
		d.mu.Lock()
		for i := range attestation.AttestedPCRs {
			v := d.pcrs[i]
			doc.PCRs[i] = v[:]
		}
		d.mu.Unlock()
		b, err := d.signer.Sign(doc)
		if err != nil {
			return errResp(InternalError)
		}
		return Response{Kind: r.Kind, Document: b}
	}
	return errResp(InvalidArgument)
}
