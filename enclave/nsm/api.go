package nsm

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Driver ABI constants (Linux drivers/misc/nsm.c, aws-nitro-enclaves-nsm-api).
const (
	// IoctlCmd is _IOWR(0x0A, 0, struct nsm_raw): two struct iovec, 32 bytes.
	IoctlCmd = 0xC0200A00
	// RawSize is sizeof(struct nsm_raw) on 64-bit Linux.
	RawSize = 32
	// MaxRequest is the largest request the driver accepts (larger: EMSGSIZE).
	MaxRequest = 0x1000
	// MaxResponse is the response buffer size of the NSM library.
	MaxResponse = 0x3000
)

// Device limits.
const (
	// NumPCRs is the NSM's max_pcrs.
	NumPCRs = 32
	// LockedPCRs is how many PCRs (0 … LockedPCRs-1) are read-only from boot.
	LockedPCRs = 16
	// MaxExtendData bounds ExtendPCR's data.
	MaxExtendData = 1024
	// RandomSize is how many bytes GetRandom returns.
	RandomSize = 256
	// PCRSize is a SHA-384 PCR.
	PCRSize = 48
)

// Version is what DescribeNSM reports.
var Version = [3]uint16{1, 0, 0}

// ErrorCode is the NSM API's error code, encoded by its name.
type ErrorCode string

// The NSM API's error codes, in its order.
const (
	Success          ErrorCode = "Success"
	InvalidArgument  ErrorCode = "InvalidArgument"
	InvalidIndex     ErrorCode = "InvalidIndex"
	InvalidResponse  ErrorCode = "InvalidResponse"
	ReadOnlyIndex    ErrorCode = "ReadOnlyIndex"
	InvalidOperation ErrorCode = "InvalidOperation"
	BufferTooSmall   ErrorCode = "BufferTooSmall"
	InputTooLarge    ErrorCode = "InputTooLarge"
	InternalError    ErrorCode = "InternalError"
)

// ErrorCodes lists every code.
var ErrorCodes = []ErrorCode{Success, InvalidArgument, InvalidIndex, InvalidResponse, ReadOnlyIndex, InvalidOperation, BufferTooSmall, InputTooLarge, InternalError}

// Request kinds (the variant names).
const (
	KindDescribePCR = "DescribePCR"
	KindExtendPCR   = "ExtendPCR"
	KindLockPCR     = "LockPCR"
	KindLockPCRs    = "LockPCRs"
	KindDescribeNSM = "DescribeNSM"
	KindAttestation = "Attestation"
	KindGetRandom   = "GetRandom"
)

// Request is one decoded request. Index is DescribePCR's, ExtendPCR's and
// LockPCR's index; Range is LockPCRs'; Data is ExtendPCR's; UserData, Nonce
// and PublicKey are Attestation's (nil when absent).
type Request struct {
	Kind                       string
	Index                      uint16
	Range                      uint16
	Data                       []byte
	UserData, Nonce, PublicKey []byte
}

// RequestError is a request that could not be decoded; Code is the error
// response it gets.
type RequestError struct {
	Code ErrorCode
	Err  error
}

func (e *RequestError) Error() string { return fmt.Sprintf("%s: %v", e.Code, e.Err) }
func (e *RequestError) Unwrap() error { return e.Err }

var decMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  4,
		MaxArrayElements: 64,
		MaxMapPairs:      16,
		IndefLength:      cbor.IndefLengthForbidden,
	}.DecMode()
	if err != nil {
		panic(err) // constant options
	}
	return dm
}()

type indexFields struct {
	Index *uint64 `cbor:"index"`
}

type extendFields struct {
	Index *uint64 `cbor:"index"`
	Data  []byte  `cbor:"data"`
}

type rangeFields struct {
	Range *uint64 `cbor:"range"`
}

type attestationFields struct {
	UserData  []byte `cbor:"user_data"`
	Nonce     []byte `cbor:"nonce"`
	PublicKey []byte `cbor:"public_key"`
}

func u16(v *uint64, name string) (uint16, error) {
	if v == nil {
		return 0, &RequestError{InvalidArgument, fmt.Errorf("missing field %q", name)}
	}
	if *v > 0xffff {
		return 0, &RequestError{InvalidArgument, fmt.Errorf("field %q is %d, above 65535", name, *v)}
	}
	return uint16(*v), nil
}

// DecodeRequest decodes a CBOR request. Errors are *RequestError.
func DecodeRequest(b []byte) (Request, error) {
	if len(b) > MaxRequest {
		return Request{}, &RequestError{InputTooLarge, fmt.Errorf("request is %d bytes, at most %d", len(b), MaxRequest)}
	}
	if len(b) == 0 {
		return Request{}, &RequestError{InvalidArgument, errors.New("empty request")}
	}
	var unit string
	if err := decMode.Unmarshal(b, &unit); err == nil {
		switch unit {
		case KindDescribeNSM, KindGetRandom:
			return Request{Kind: unit}, nil
		}
		return Request{}, &RequestError{InvalidArgument, fmt.Errorf("unknown request %q", unit)}
	}
	var m map[string]cbor.RawMessage
	if err := decMode.Unmarshal(b, &m); err != nil {
		return Request{}, &RequestError{InvalidArgument, fmt.Errorf("decoding request: %w", err)}
	}
	if len(m) != 1 {
		return Request{}, &RequestError{InvalidArgument, fmt.Errorf("request map has %d entries, want 1 (the request name)", len(m))}
	}
	var kind string
	var body cbor.RawMessage
	for k, v := range m {
		kind, body = k, v
	}
	r := Request{Kind: kind}
	var err error
	switch kind {
	case KindDescribePCR, KindLockPCR:
		var f indexFields
		if err := decMode.Unmarshal(body, &f); err != nil {
			return Request{}, &RequestError{InvalidArgument, fmt.Errorf("decoding %s: %w", kind, err)}
		}
		r.Index, err = u16(f.Index, "index")
	case KindExtendPCR:
		var f extendFields
		if err := decMode.Unmarshal(body, &f); err != nil {
			return Request{}, &RequestError{InvalidArgument, fmt.Errorf("decoding %s: %w", kind, err)}
		}
		if f.Data == nil {
			return Request{}, &RequestError{InvalidArgument, errors.New(`ExtendPCR has no "data"`)}
		}
		r.Data = f.Data
		r.Index, err = u16(f.Index, "index")
	case KindLockPCRs:
		var f rangeFields
		if err := decMode.Unmarshal(body, &f); err != nil {
			return Request{}, &RequestError{InvalidArgument, fmt.Errorf("decoding %s: %w", kind, err)}
		}
		r.Range, err = u16(f.Range, "range")
	case KindAttestation:
		var f attestationFields
		if err := decMode.Unmarshal(body, &f); err != nil {
			return Request{}, &RequestError{InvalidArgument, fmt.Errorf("decoding %s: %w", kind, err)}
		}
		r.UserData, r.Nonce, r.PublicKey = f.UserData, f.Nonce, f.PublicKey
	default:
		return Request{}, &RequestError{InvalidArgument, fmt.Errorf("unknown request %q", kind)}
	}
	if err != nil {
		return Request{}, err
	}
	return r, nil
}

// EncodeRequest encodes r as the NSM library does (for clients and tests).
func EncodeRequest(r Request) ([]byte, error) {
	switch r.Kind {
	case KindDescribeNSM, KindGetRandom:
		return cbor.Marshal(r.Kind)
	case KindDescribePCR, KindLockPCR:
		return cbor.Marshal(map[string]any{r.Kind: struct {
			Index uint16 `cbor:"index"`
		}{r.Index}})
	case KindExtendPCR:
		return cbor.Marshal(map[string]any{r.Kind: struct {
			Index uint16 `cbor:"index"`
			Data  []byte `cbor:"data"`
		}{r.Index, nonNil(r.Data)}})
	case KindLockPCRs:
		return cbor.Marshal(map[string]any{r.Kind: struct {
			Range uint16 `cbor:"range"`
		}{r.Range}})
	case KindAttestation:
		return cbor.Marshal(map[string]any{r.Kind: attestationFields{r.UserData, r.Nonce, r.PublicKey}})
	}
	return nil, fmt.Errorf("unknown NSM request kind %q", r.Kind)
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Response is one decoded response; Kind is the variant (or "Error").
type Response struct {
	Kind string
	// Error is set for an error response.
	Error ErrorCode
	// Lock and Data are DescribePCR's; Data is also ExtendPCR's.
	Lock bool
	Data []byte
	// Document is Attestation's; Random is GetRandom's.
	Document []byte
	Random   []byte
	// Description is DescribeNSM's.
	Description *Description
}

// Description is DescribeNSM's answer.
type Description struct {
	VersionMajor uint16   `cbor:"version_major"`
	VersionMinor uint16   `cbor:"version_minor"`
	VersionPatch uint16   `cbor:"version_patch"`
	ModuleID     string   `cbor:"module_id"`
	MaxPCRs      uint16   `cbor:"max_pcrs"`
	LockedPCRs   []uint16 `cbor:"locked_pcrs"`
	Digest       string   `cbor:"digest"`
}

type pcrFields struct {
	Lock bool   `cbor:"lock"`
	Data []byte `cbor:"data"`
}

type dataFields struct {
	Data []byte `cbor:"data"`
}

type documentFields struct {
	Document []byte `cbor:"document"`
}

type randomFields struct {
	Random []byte `cbor:"random"`
}

// EncodeResponse encodes r as the NSM does.
func EncodeResponse(r Response) ([]byte, error) {
	var v any
	switch r.Kind {
	case "Error":
		v = map[string]string{"Error": string(r.Error)}
	case KindLockPCR, KindLockPCRs:
		v = r.Kind
	case KindDescribePCR:
		v = map[string]any{r.Kind: pcrFields{r.Lock, nonNil(r.Data)}}
	case KindExtendPCR:
		v = map[string]any{r.Kind: dataFields{nonNil(r.Data)}}
	case KindAttestation:
		v = map[string]any{r.Kind: documentFields{nonNil(r.Document)}}
	case KindGetRandom:
		v = map[string]any{r.Kind: randomFields{nonNil(r.Random)}}
	case KindDescribeNSM:
		if r.Description == nil {
			return nil, errors.New("DescribeNSM response without a description")
		}
		d := *r.Description
		if d.LockedPCRs == nil {
			d.LockedPCRs = []uint16{}
		}
		v = map[string]any{r.Kind: d}
	default:
		return nil, fmt.Errorf("unknown NSM response kind %q", r.Kind)
	}
	return cbor.Marshal(v)
}

// ErrorResponse is the encoded error response for code.
func ErrorResponse(code ErrorCode) []byte {
	b, _ := cbor.Marshal(map[string]string{"Error": string(code)})
	return b
}

// DecodeResponse decodes a CBOR response (for clients and tests).
func DecodeResponse(b []byte) (Response, error) {
	var unit string
	if err := decMode.Unmarshal(b, &unit); err == nil {
		switch unit {
		case KindLockPCR, KindLockPCRs:
			return Response{Kind: unit}, nil
		}
		return Response{}, fmt.Errorf("unknown NSM response %q", unit)
	}
	var m map[string]cbor.RawMessage
	if err := decMode.Unmarshal(b, &m); err != nil {
		return Response{}, fmt.Errorf("decoding NSM response: %w", err)
	}
	if len(m) != 1 {
		return Response{}, fmt.Errorf("NSM response map has %d entries, want 1", len(m))
	}
	for k, body := range m {
		r := Response{Kind: k}
		var err error
		switch k {
		case "Error":
			var s string
			err = decMode.Unmarshal(body, &s)
			r.Error = ErrorCode(s)
		case KindDescribePCR:
			var f pcrFields
			err = decMode.Unmarshal(body, &f)
			r.Lock, r.Data = f.Lock, f.Data
		case KindExtendPCR:
			var f dataFields
			err = decMode.Unmarshal(body, &f)
			r.Data = f.Data
		case KindAttestation:
			var f documentFields
			err = decMode.Unmarshal(body, &f)
			r.Document = f.Document
		case KindGetRandom:
			var f randomFields
			err = decMode.Unmarshal(body, &f)
			r.Random = f.Random
		case KindDescribeNSM:
			r.Description = new(Description)
			err = decMode.Unmarshal(body, r.Description)
		default:
			return Response{}, fmt.Errorf("unknown NSM response %q", k)
		}
		if err != nil {
			return Response{}, fmt.Errorf("decoding NSM %s response: %w", k, err)
		}
		return r, nil
	}
	return Response{}, errors.New("empty NSM response")
}
