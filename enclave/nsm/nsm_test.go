package nsm

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/attestation"
)

// cb builds CBOR by hand, item by item, as serde_cbor writes it: text and
// byte strings with minimal-length heads, definite-length maps.
func head(major byte, n int) []byte {
	switch {
	case n < 24:
		return []byte{major<<5 | byte(n)}
	case n < 256:
		return []byte{major<<5 | 24, byte(n)}
	default:
		return []byte{major<<5 | 25, byte(n >> 8), byte(n)}
	}
}

func tstr(s string) []byte   { return append(head(3, len(s)), s...) }
func bstr(b []byte) []byte   { return append(head(2, len(b)), b...) }
func uintc(n int) []byte     { return head(0, n) }
func mapn(n int) []byte      { return head(5, n) }
func arrn(n int) []byte      { return head(4, n) }
func cat(p ...[]byte) []byte { return bytes.Join(p, nil) }

var null = []byte{0xf6}

// Requests as aws-nitro-enclaves-nsm-api's Request enum serialises them with
// serde_cbor (externally tagged; data fields are serde_bytes / ByteBuf).
var recordedRequests = []struct {
	name string
	enc  []byte
	req  Request
}{
	{"DescribeNSM", tstr("DescribeNSM"), Request{Kind: KindDescribeNSM}},
	{"GetRandom", tstr("GetRandom"), Request{Kind: KindGetRandom}},
	{"DescribePCR", cat(mapn(1), tstr("DescribePCR"), mapn(1), tstr("index"), uintc(0)), Request{Kind: KindDescribePCR}},
	{"ExtendPCR", cat(mapn(1), tstr("ExtendPCR"), mapn(2), tstr("index"), uintc(16), tstr("data"), bstr([]byte{1, 2, 3})), Request{Kind: KindExtendPCR, Index: 16, Data: []byte{1, 2, 3}}},
	{"LockPCR", cat(mapn(1), tstr("LockPCR"), mapn(1), tstr("index"), uintc(16)), Request{Kind: KindLockPCR, Index: 16}},
	{"LockPCRs", cat(mapn(1), tstr("LockPCRs"), mapn(1), tstr("range"), uintc(32)), Request{Kind: KindLockPCRs, Range: 32}},
	{"Attestation none", cat(mapn(1), tstr("Attestation"), mapn(3), tstr("user_data"), null, tstr("nonce"), null, tstr("public_key"), null), Request{Kind: KindAttestation}},
	{"Attestation all", cat(mapn(1), tstr("Attestation"), mapn(3), tstr("user_data"), bstr([]byte{0xaa}), tstr("nonce"), bstr([]byte{0xbb, 0xcc}), tstr("public_key"), bstr([]byte{0xdd})),
		Request{Kind: KindAttestation, UserData: []byte{0xaa}, Nonce: []byte{0xbb, 0xcc}, PublicKey: []byte{0xdd}}},
}

func TestRequestRoundTrip(t *testing.T) {
	for _, c := range recordedRequests {
		t.Run(c.name, func(t *testing.T) {
			got, err := DecodeRequest(c.enc)
			if err != nil {
				t.Fatalf("decoding %x: %v", c.enc, err)
			}
			if got.Kind != c.req.Kind || got.Index != c.req.Index || got.Range != c.req.Range || !bytes.Equal(got.Data, c.req.Data) ||
				!bytes.Equal(got.UserData, c.req.UserData) || !bytes.Equal(got.Nonce, c.req.Nonce) || !bytes.Equal(got.PublicKey, c.req.PublicKey) {
				t.Errorf("decoded %+v, want %+v", got, c.req)
			}
			enc, err := EncodeRequest(c.req)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(enc, c.enc) {
				t.Errorf("encoded %x, serde_cbor writes %x", enc, c.enc)
			}
		})
	}
}

// Responses as the Response enum serialises them.
func TestResponseRoundTrip(t *testing.T) {
	pcr := make([]byte, 48)
	pcr[0] = 7
	locked := []uint16{}
	lockedEnc := [][]byte{}
	for i := range 16 {
		locked = append(locked, uint16(i))
		lockedEnc = append(lockedEnc, uintc(i))
	}
	for _, c := range []struct {
		name string
		enc  []byte
		resp Response
	}{
		{"LockPCR", tstr("LockPCR"), Response{Kind: KindLockPCR}},
		{"LockPCRs", tstr("LockPCRs"), Response{Kind: KindLockPCRs}},
		{"DescribePCR", cat(mapn(1), tstr("DescribePCR"), mapn(2), tstr("lock"), []byte{0xf5}, tstr("data"), bstr(pcr)), Response{Kind: KindDescribePCR, Lock: true, Data: pcr}},
		{"ExtendPCR", cat(mapn(1), tstr("ExtendPCR"), mapn(1), tstr("data"), bstr(pcr)), Response{Kind: KindExtendPCR, Data: pcr}},
		{"Attestation", cat(mapn(1), tstr("Attestation"), mapn(1), tstr("document"), bstr([]byte{0x84, 1})), Response{Kind: KindAttestation, Document: []byte{0x84, 1}}},
		{"GetRandom", cat(mapn(1), tstr("GetRandom"), mapn(1), tstr("random"), bstr(bytes.Repeat([]byte{9}, 256))), Response{Kind: KindGetRandom, Random: bytes.Repeat([]byte{9}, 256)}},
		{"DescribeNSM", cat(mapn(1), tstr("DescribeNSM"), mapn(7),
			tstr("version_major"), uintc(1), tstr("version_minor"), uintc(0), tstr("version_patch"), uintc(0),
			tstr("module_id"), tstr("i-x-enc1"), tstr("max_pcrs"), uintc(32),
			tstr("locked_pcrs"), cat(append([][]byte{arrn(16)}, lockedEnc...)...), tstr("digest"), tstr("SHA384")),
			Response{Kind: KindDescribeNSM, Description: &Description{1, 0, 0, "i-x-enc1", 32, locked, "SHA384"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			enc, err := EncodeResponse(c.resp)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(enc, c.enc) {
				t.Errorf("encoded\n%x\nserde_cbor writes\n%x", enc, c.enc)
			}
			got, err := DecodeResponse(c.enc)
			if err != nil {
				t.Fatal(err)
			}
			again, _ := EncodeResponse(got)
			if !bytes.Equal(again, c.enc) {
				t.Errorf("decode+encode gave %x", again)
			}
		})
	}
}

// Every error code encodes as the ErrorCode enum's unit variant inside
// Response::Error, and decodes back.
func TestErrorCodes(t *testing.T) {
	for _, c := range ErrorCodes {
		enc := ErrorResponse(c)
		want := cat(mapn(1), tstr("Error"), tstr(string(c)))
		if !bytes.Equal(enc, want) {
			t.Errorf("%s encodes as %x, want %x", c, enc, want)
		}
		r, err := DecodeResponse(enc)
		if err != nil || r.Kind != "Error" || r.Error != c {
			t.Errorf("%s decodes as %+v, %v", c, r, err)
		}
	}
}

type fakeSigner struct{ err error }

func (f fakeSigner) Sign(d *attestation.Document) ([]byte, error) {
	if f.err != nil {
		return nil, f.err
	}
	return []byte("signed:" + string(d.Nonce)), nil
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

func device(t *testing.T, cfg Config) *Device {
	t.Helper()
	d, err := NewDevice(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func handle(t *testing.T, d *Device, r Request) Response {
	t.Helper()
	b, err := EncodeRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := DecodeResponse(d.Handle(b))
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// Each error the device produces, for the request that causes it.
func TestDeviceErrors(t *testing.T) {
	d := device(t, Config{ModuleID: "m", Signer: fakeSigner{}})
	big := func(n int) []byte { return make([]byte, n) }
	for _, c := range []struct {
		name string
		raw  []byte
		req  *Request
		want ErrorCode
	}{
		{name: "not CBOR", raw: []byte{0xff, 0x00}, want: InvalidArgument},
		{name: "empty", raw: []byte{}, want: InvalidArgument},
		{name: "unknown unit", raw: tstr("Reboot"), want: InvalidArgument},
		{name: "unknown struct", raw: cat(mapn(1), tstr("Reboot"), mapn(0)), want: InvalidArgument},
		{name: "two variants", raw: cat(mapn(2), tstr("LockPCR"), mapn(1), tstr("index"), uintc(16), tstr("DescribePCR"), mapn(1), tstr("index"), uintc(1)), want: InvalidArgument},
		{name: "missing index", raw: cat(mapn(1), tstr("DescribePCR"), mapn(0)), want: InvalidArgument},
		{name: "index above u16", raw: cat(mapn(1), tstr("DescribePCR"), mapn(1), tstr("index"), []byte{0x1a, 0, 1, 0, 0}), want: InvalidArgument},
		{name: "negative index", raw: cat(mapn(1), tstr("DescribePCR"), mapn(1), tstr("index"), []byte{0x20}), want: InvalidArgument},
		{name: "extend without data", raw: cat(mapn(1), tstr("ExtendPCR"), mapn(1), tstr("index"), uintc(16)), want: InvalidArgument},
		{name: "data not bytes", raw: cat(mapn(1), tstr("ExtendPCR"), mapn(2), tstr("index"), uintc(16), tstr("data"), tstr("x")), want: InvalidArgument},
		{name: "request too large", raw: cat(mapn(1), tstr("ExtendPCR"), mapn(2), tstr("index"), uintc(16), tstr("data"), bstr(big(MaxRequest))), want: InputTooLarge},
		{name: "describe PCR32", req: &Request{Kind: KindDescribePCR, Index: 32}, want: InvalidIndex},
		{name: "extend PCR40", req: &Request{Kind: KindExtendPCR, Index: 40, Data: []byte{1}}, want: InvalidIndex},
		{name: "lock PCR99", req: &Request{Kind: KindLockPCR, Index: 99}, want: InvalidIndex},
		{name: "lock range 33", req: &Request{Kind: KindLockPCRs, Range: 33}, want: InvalidIndex},
		{name: "extend PCR0", req: &Request{Kind: KindExtendPCR, Index: 0, Data: []byte{1}}, want: ReadOnlyIndex},
		{name: "lock PCR3", req: &Request{Kind: KindLockPCR, Index: 3}, want: ReadOnlyIndex},
		{name: "extend data too large", req: &Request{Kind: KindExtendPCR, Index: 16, Data: big(MaxExtendData + 1)}, want: InputTooLarge},
		{name: "user data too large", req: &Request{Kind: KindAttestation, UserData: big(513)}, want: InputTooLarge},
		{name: "nonce too large", req: &Request{Kind: KindAttestation, Nonce: big(513)}, want: InputTooLarge},
		{name: "public key too large", req: &Request{Kind: KindAttestation, PublicKey: big(1025)}, want: InputTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw := c.raw
			if c.req != nil {
				var err error
				if raw, err = EncodeRequest(*c.req); err != nil {
					t.Fatal(err)
				}
			}
			r, err := DecodeResponse(d.Handle(raw))
			if err != nil || r.Kind != "Error" || r.Error != c.want {
				t.Errorf("got %+v, %v; want error %s", r, err, c.want)
			}
		})
	}
	// InternalError: no signer, a failing signer, no randomness.
	for name, dev := range map[string]*Device{
		"no signer":    device(t, Config{}),
		"signer fails": device(t, Config{Signer: fakeSigner{err: errors.New("hsm down")}}),
	} {
		if r := handle(t, dev, Request{Kind: KindAttestation}); r.Error != InternalError {
			t.Errorf("%s: attestation gave %+v, want InternalError", name, r)
		}
	}
	if r := handle(t, device(t, Config{Rand: failingReader{}}), Request{Kind: KindGetRandom}); r.Error != InternalError {
		t.Errorf("GetRandom without entropy gave %+v, want InternalError", r)
	}
}

func TestDevicePCRs(t *testing.T) {
	boot, err := BootPCRs(map[int]string{0: strings.Repeat("01", 48), 8: strings.Repeat("08", 48), 1: ""})
	if err != nil {
		t.Fatal(err)
	}
	d := device(t, Config{ModuleID: "i-test-enc1", PCRs: boot, Signer: fakeSigner{}})
	if r := handle(t, d, Request{Kind: KindDescribePCR, Index: 0}); !r.Lock || hex.EncodeToString(r.Data) != strings.Repeat("01", 48) {
		t.Errorf("PCR0 %+v", r)
	}
	if r := handle(t, d, Request{Kind: KindDescribePCR, Index: 3}); !r.Lock || !bytes.Equal(r.Data, make([]byte, 48)) {
		t.Errorf("PCR3 %+v, want locked zero", r)
	}
	h := sha512.New384()
	h.Write(make([]byte, 48))
	h.Write([]byte("abc"))
	want := h.Sum(nil)
	if r := handle(t, d, Request{Kind: KindExtendPCR, Index: 16, Data: []byte("abc")}); r.Kind != KindExtendPCR || !bytes.Equal(r.Data, want) {
		t.Errorf("extend: %+v, want %x", r, want)
	}
	if r := handle(t, d, Request{Kind: KindDescribePCR, Index: 16}); r.Lock || !bytes.Equal(r.Data, want) {
		t.Errorf("describe after extend: %+v", r)
	}
	if r := handle(t, d, Request{Kind: KindLockPCR, Index: 16}); r.Kind != KindLockPCR {
		t.Errorf("lock: %+v", r)
	}
	if r := handle(t, d, Request{Kind: KindExtendPCR, Index: 16, Data: []byte("abc")}); r.Error != ReadOnlyIndex {
		t.Errorf("extend after lock: %+v, want ReadOnlyIndex", r)
	}
	if r := handle(t, d, Request{Kind: KindLockPCRs, Range: 32}); r.Kind != KindLockPCRs {
		t.Errorf("lock range: %+v", r)
	}
	r := handle(t, d, Request{Kind: KindDescribeNSM})
	if r.Description == nil || r.Description.MaxPCRs != 32 || len(r.Description.LockedPCRs) != 32 || r.Description.ModuleID != "i-test-enc1" || r.Description.Digest != "SHA384" {
		t.Errorf("describe: %+v", r.Description)
	}
	if r := handle(t, d, Request{Kind: KindGetRandom}); len(r.Random) != RandomSize {
		t.Errorf("random: %d bytes", len(r.Random))
	}
	if r := handle(t, d, Request{Kind: KindAttestation, Nonce: []byte("n1")}); string(r.Document) != "signed:n1" {
		t.Errorf("attestation: %+v", r)
	}
	if _, err := NewDevice(Config{PCRs: map[int][]byte{16: make([]byte, 48)}}); err == nil {
		t.Error("a boot PCR above 15 was accepted")
	}
	if _, err := NewDevice(Config{PCRs: map[int][]byte{0: make([]byte, 32)}}); err == nil {
		t.Error("a 32-byte boot PCR was accepted")
	}
}

// The device's documents carry the boot PCRs and verify with the CA.
func TestDeviceDocument(t *testing.T) {
	ca, err := attestation.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ca.NewSigner("i-test-enc1")
	if err != nil {
		t.Fatal(err)
	}
	pcr0 := bytes.Repeat([]byte{0xab}, 48)
	d := device(t, Config{ModuleID: "i-test-enc1", PCRs: map[int][]byte{0: pcr0}, Signer: s})
	r := handle(t, d, Request{Kind: KindAttestation, Nonce: []byte("nonce"), UserData: []byte("ud")})
	doc, err := attestation.Verify(r.Document, attestation.VerifyOptions{Root: ca.Cert, PCRs: map[int][]byte{0: pcr0}, Nonce: []byte("nonce")})
	if err != nil {
		t.Fatal(err)
	}
	if string(doc.UserData) != "ud" || doc.ModuleID != "i-test-enc1" || time.Since(time.UnixMilli(int64(doc.Timestamp))) > time.Minute {
		t.Errorf("document %+v", doc)
	}
}

// Whatever arrives, Handle answers with a decodable response and never
// panics or hangs.
func FuzzHandle(f *testing.F) {
	for _, c := range recordedRequests {
		f.Add(c.enc)
	}
	f.Add([]byte{0xbf, 0xff})
	f.Add([]byte{0x9f})
	d, err := NewDevice(Config{ModuleID: "m", Signer: fakeSigner{}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out := d.Handle(b)
		if _, err := DecodeResponse(out); err != nil {
			t.Fatalf("response %x to %x does not decode: %v", out, b, err)
		}
	})
}
