package eif

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The test vector of docs/EIF-FORMAT.md "Measurements".
var vector = Measurements{
	HashAlgorithm: HashAlgorithm,
	PCR0:          "a65ec572727fe7199e8b03384cd7681d8cf70426ad14efc9199f9334d636389ca2d30ebd5274c846f5f51bb16eac6b91",
	PCR1:          "daeea64efa71e4b6dd2433401ca4eb6eba8080ea1f38c0a6ee008c7899a1ff9818be4d81ce26147a0381f96eb7fd4221",
	PCR2:          "ce0dc93d7b5412312ec312a0c77d7b946a9e9969183cab4b6bec4a4a3a5c9bc1280b8b864cb0d1494588d292c5b4832c",
}

const singleRamdiskPCR2 = "21b9efbc184807662e966d34f390821309eeac6802309798826296bf3e8bec7c10edb30948c90ba67310f7b964fc500a"

func writeFile(t *testing.T, img Image, opts WriterOptions) (string, Measurements) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "test.eif")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := Write(f, img, opts)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	return p, m
}

func vectorImage() Image {
	return Image{Kernel: strings.NewReader("KERNEL"), Cmdline: "console=ttyS0", Ramdisks: []io.Reader{strings.NewReader("R0"), strings.NewReader("R1")}}
}

func TestVector(t *testing.T) {
	p, m := writeFile(t, vectorImage(), WriterOptions{})
	if d := cmp.Diff(vector, m); d != "" {
		t.Errorf("Write measurements (-want +got):\n%s", d)
	}
	rep := verifyFile(t, p)
	if d := cmp.Diff(vector, rep.Measurements); d != "" {
		t.Errorf("Verify measurements (-want +got):\n%s", d)
	}
	// Single ramdisk: PCR2 is the PCR of empty content.
	_, m = writeFile(t, Image{Kernel: strings.NewReader("KERNEL"), Cmdline: "console=ttyS0", Ramdisks: []io.Reader{strings.NewReader("R0")}}, WriterOptions{})
	if m.PCR2 != singleRamdiskPCR2 {
		t.Errorf("single ramdisk PCR2 = %s, want %s", m.PCR2, singleRamdiskPCR2)
	}
}

// TestLayout checks the bytes of a small EIF against the layout in docs/EIF-FORMAT.md.
func TestLayout(t *testing.T) {
	p, _ := writeFile(t, vectorImage(), WriterOptions{})
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	hdr := make([]byte, HeaderSize)
	copy(hdr, ".eif\x00\x04\x00\x00")
	put64 := func(off int, v uint64) {
		for i := 0; i < 8; i++ {
			hdr[off+i] = byte(v >> (56 - 8*i))
		}
	}
	put64(8, 1<<30)
	put64(16, 2)
	hdr[27] = 4
	sizes := []int{6, 13, 2, 2}
	off := HeaderSize
	for i, s := range sizes {
		put64(28+8*i, uint64(off))
		put64(284+8*i, uint64(s))
		off += 12 + s
	}
	want.Write(hdr)
	for i, d := range []string{"KERNEL", "console=ttyS0", "R0", "R1"} {
		want.Write([]byte{0, byte(i + 1), 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(len(d))})
		if i == 3 {
			want.Bytes()[want.Len()-11] = 3
		}
		want.WriteString(d)
	}
	w := want.Bytes()
	w[HeaderSize+12+6+1] = 2
	w[HeaderSize+2*12+6+13+1] = 3
	crc := crc32.ChecksumIEEE(append(append([]byte{}, w[:544]...), w[548:]...))
	w[544], w[545], w[546], w[547] = byte(crc>>24), byte(crc>>16), byte(crc>>8), byte(crc)
	if !bytes.Equal(w, b) {
		t.Errorf("file bytes differ:\nwant %x\ngot  %x", w, b)
	}
}

func TestCRC32Combine(t *testing.T) {
	data := make([]byte, 100000)
	rand.Read(data)
	for _, split := range []int{0, 1, 7, 12, 4096, 99999, 100000} {
		a, b := data[:split], data[split:]
		got := crc32Combine(crc32.ChecksumIEEE(a), crc32.ChecksumIEEE(b), int64(len(b)))
		if want := crc32.ChecksumIEEE(data); got != want {
			t.Errorf("split %d: combine = %#x, want %#x", split, got, want)
		}
	}
}

func verifyFile(t *testing.T, p string) *Report {
	t.Helper()
	rep, err := verifyPath(p)
	if err != nil {
		t.Fatalf("verifying %s: %v", p, err)
	}
	return rep
}

func verifyPath(p string) (*Report, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	ef, err := Open(f, fi.Size())
	if err != nil {
		return nil, err
	}
	return ef.Verify()
}

// testSigner makes a self-signed certificate and key on curve c.
func testSigner(t testing.TB, c elliptic.Curve) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "nitropod test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func TestRoundTrip(t *testing.T) {
	certPEM, keyPEM := testSigner(t, elliptic.P384())
	signer, err := NewSigner(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 2, 5} {
		for _, signed := range []bool{false, true} {
			t.Run(fmt.Sprintf("ramdisks=%d,signed=%v", n, signed), func(t *testing.T) {
				var opts WriterOptions
				if signed {
					opts.Signer = signer
				}
				p := filepath.Join(t.TempDir(), "x.eif")
				f, err := os.Create(p)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				w, err := NewWriter(f, opts)
				if err != nil {
					t.Fatal(err)
				}
				kernel := bytes.Repeat([]byte("k"), 3<<20+5) // several chunks
				if _, err := w.WriteSection(SectionKernel, bytes.NewReader(kernel)); err != nil {
					t.Fatal(err)
				}
				if _, err := w.WriteSection(SectionCmdline, strings.NewReader("console=ttyS0")); err != nil {
					t.Fatal(err)
				}
				var rds [][]byte
				for i := 0; i < n; i++ {
					rd := bytes.Repeat([]byte{byte(i)}, 1000*i)
					rds = append(rds, rd)
					if _, err := w.WriteSection(SectionRamdisk, bytes.NewReader(rd)); err != nil {
						t.Fatal(err)
					}
				}
				m, err := w.Close()
				if err != nil {
					t.Fatal(err)
				}
				// Expected PCRs from the definitions.
				cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
				pre := cat(kernel, []byte("console=ttyS0"))
				want := Measurements{HashAlgorithm: HashAlgorithm, PCR0: PCRHex(cat(append([][]byte{pre}, rds...)...)), PCR2: PCRHex(nil)}
				if n > 0 {
					want.PCR1 = PCRHex(cat(pre, rds[0]))
					want.PCR2 = PCRHex(cat(rds[1:]...))
				} else {
					want.PCR1 = PCRHex(pre)
				}
				if signed {
					want.PCR8 = signer.PCR8()
				}
				if d := cmp.Diff(want, m); d != "" {
					t.Errorf("Close measurements (-want +got):\n%s", d)
				}
				fi, _ := f.Stat()
				ef, err := Open(f, fi.Size())
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				rep, err := ef.Verify()
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if d := cmp.Diff(want, rep.Measurements); d != "" {
					t.Errorf("Verify measurements (-want +got):\n%s", d)
				}
				if rep.Signed != signed || rep.SignatureOK != signed || !rep.CRCOK {
					t.Errorf("report: signed %v ok %v crc %v", rep.Signed, rep.SignatureOK, rep.CRCOK)
				}
				for i, s := range ef.Sections[2 : 2+n] {
					got, _ := io.ReadAll(ef.Data(s))
					if !bytes.Equal(got, rds[i]) {
						t.Errorf("ramdisk %d data differs", i)
					}
				}
			})
		}
	}
}

// TestFlippedByte flips every byte of a small EIF in turn: each flip must
// make Open fail or Verify report a CRC mismatch.
func TestFlippedByte(t *testing.T) {
	certPEM, keyPEM := testSigner(t, elliptic.P256())
	signer, err := NewSigner(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	md := &Metadata{ImageName: "img", ImageVersion: "1", DockerInfo: json.RawMessage(`{"b":1,"a":"<x>"}`)}
	img := vectorImage()
	img.Metadata = md
	p, _ := writeFile(t, img, WriterOptions{Signer: signer})
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for i := range orig {
		b := bytes.Clone(orig)
		b[i] ^= 0x01
		ef, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("byte %d: Open error %v does not wrap ErrFormat", i, err)
			}
			continue
		}
		rep, err := ef.Verify()
		if !errors.Is(err, ErrCRC) || rep.CRCOK {
			t.Fatalf("byte %d flipped: Verify err = %v, CRCOK = %v; want a CRC failure", i, err, rep.CRCOK)
		}
	}
}

// TestTamperedSigned changes a ramdisk of a signed image and fixes up the
// CRC: the signature check must fail.
func TestTamperedSigned(t *testing.T) {
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		t.Run(c.Params().Name, func(t *testing.T) {
			certPEM, keyPEM := testSigner(t, c)
			signer, err := NewSigner(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			p, _ := writeFile(t, vectorImage(), WriterOptions{Signer: signer})
			b, _ := os.ReadFile(p)
			ef, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			rep, err := ef.Verify()
			if err != nil || !rep.SignatureOK {
				t.Fatalf("untampered: %v", err)
			}
			rd, _ := ef.First(SectionRamdisk)
			b[rd.DataOffset()] ^= 0xff
			crc := crc32.ChecksumIEEE(append(append([]byte{}, b[:544]...), b[548:]...))
			b[544], b[545], b[546], b[547] = byte(crc>>24), byte(crc>>16), byte(crc>>8), byte(crc)
			ef, err = Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			rep, err = ef.Verify()
			if !errors.Is(err, ErrSignature) || rep.SignatureOK || !rep.CRCOK {
				t.Fatalf("tampered: err = %v, SignatureOK %v CRCOK %v; want a signature failure only", err, rep.SignatureOK, rep.CRCOK)
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	p, _ := writeFile(t, vectorImage(), WriterOptions{})
	orig, _ := os.ReadFile(p)
	for _, tc := range []struct {
		name  string
		edit  func(b []byte) []byte
		field string
	}{
		{"short", func(b []byte) []byte { return b[:100] }, "header"},
		{"magic", func(b []byte) []byte { b[0] = 'x'; return b }, "magic"},
		{"version", func(b []byte) []byte { b[5] = 9; return b }, "version"},
		{"count", func(b []byte) []byte { b[27] = 33; return b }, "number of sections"},
		{"offset", func(b []byte) []byte { b[28+8+7]++; return b }, "section 1 offset"},
		{"size past end", func(b []byte) []byte { b[284+3*8+6] = 1; return b }, "section 3 size"},
		{"type", func(b []byte) []byte { b[HeaderSize+1] = 9; return b }, "section 0 type"},
		{"flags", func(b []byte) []byte { b[HeaderSize+3] = 1; return b }, "section 0 flags"},
		{"header size", func(b []byte) []byte { b[HeaderSize+11] = 5; return b }, "section 0 (kernel) size"},
		{"trailing", func(b []byte) []byte { return append(b, 0) }, "end of file"},
		{"no kernel", func(b []byte) []byte { b[HeaderSize+1] = 3; return b }, "sections"},
		{"two cmdlines", func(b []byte) []byte { b[HeaderSize+12+6+12+13+1] = 2; return b }, "sections"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.edit(bytes.Clone(orig))
			_, err := Open(bytes.NewReader(b), int64(len(b)))
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, ErrFormat) {
				t.Fatalf("Open: err = %v, want a *FormatError", err)
			}
			if fe.Field != tc.field {
				t.Errorf("field = %q, want %q (%v)", fe.Field, tc.field, err)
			}
		})
	}
}

func TestMetadataJSON(t *testing.T) {
	md := &Metadata{
		ImageName: "app", ImageVersion: "1.0",
		Build:          BuildMetadata{BuildTime: "2024-01-02T03:04:05Z", BuildTool: "nitropod", BuildToolVersion: "dev", OperatingSystem: "linux", KernelVersion: "6.1"},
		DockerInfo:     json.RawMessage(`{"z": {"b": 2, "a": 1.50}, "a": "<&>"}`),
		CustomMetadata: nil,
	}
	b, err := md.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"ImageName":"app","ImageVersion":"1.0","BuildMetadata":{"BuildTime":"2024-01-02T03:04:05Z","BuildTool":"nitropod","BuildToolVersion":"dev","OperatingSystem":"linux","KernelVersion":"6.1"},"DockerInfo":{"a":"<&>","z":{"a":1.50,"b":2}},"CustomMetadata":null}`
	if string(b) != want {
		t.Errorf("metadata JSON:\n got %s\nwant %s", b, want)
	}
	md.CustomMetadata = json.RawMessage(`{"x":` + strings.Repeat(" ", MaxCustomMetadata) + `1}`)
	if _, err := md.MarshalJSON(); err == nil {
		t.Error("oversized custom metadata accepted")
	}
}

func TestFormatBuildTime(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{time.Unix(1700000000, 0), "2023-11-14T22:13:20+00:00"},
		{time.Unix(1700000000, 5_000_000), "2023-11-14T22:13:20.005+00:00"},
		{time.Unix(1700000000, 5_000), "2023-11-14T22:13:20.000005+00:00"},
		{time.Unix(1700000000, 7).In(time.FixedZone("x", 3600)), "2023-11-14T22:13:20.000000007+00:00"},
	} {
		if got := FormatBuildTime(tc.t); got != tc.want {
			t.Errorf("FormatBuildTime(%v) = %q, want %q", tc.t, got, tc.want)
		}
	}
}

func TestCertificatePCR(t *testing.T) {
	certPEM, keyPEM := testSigner(t, elliptic.P384())
	got, err := CertificatePCR(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	if want := PCRHex(blk.Bytes); got != want {
		t.Errorf("CertificatePCR = %s, want %s", got, want)
	}
	if _, err := CertificatePCR(keyPEM); err == nil {
		t.Error("CertificatePCR accepted a key")
	}
}

func TestSignFile(t *testing.T) {
	p, unsigned := writeFile(t, vectorImage(), WriterOptions{})
	for i, c := range []elliptic.Curve{elliptic.P256(), elliptic.P521()} { // sign, then re-sign
		certPEM, keyPEM := testSigner(t, c)
		signer, err := NewSigner(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		m, err := SignFile(f, signer)
		f.Close()
		if err != nil {
			t.Fatalf("round %d: SignFile: %v", i, err)
		}
		want := unsigned
		want.PCR8 = signer.PCR8()
		if m != want {
			t.Errorf("round %d: measurements %+v, want %+v", i, m, want)
		}
		rep := verifyFile(t, p)
		if !rep.SignatureOK || rep.Measurements != want {
			t.Errorf("round %d: report %+v", i, rep)
		}
		// Identical to writing it signed in the first place, up to the signature bytes.
		ef, _ := os.ReadFile(p)
		f2, _ := Open(bytes.NewReader(ef), int64(len(ef)))
		if len(f2.Sections) != 5 {
			t.Errorf("round %d: %d sections", i, len(f2.Sections))
		}
	}
}

// oddReader returns data in pieces of varying size and hides WriteTo, so
// that io.Copy uses the section writer's ReadFrom.
type oddReader struct {
	b []byte
	i int
}

func (r *oddReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	r.i++
	n := min(len(p), len(r.b), 1+(r.i*7919)%(300<<10))
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

func TestSectionReadFrom(t *testing.T) {
	data := make([]byte, 5<<20+123)
	rand.Read(data)
	var b seekBuffer
	w, err := NewWriter(&b, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		t SectionType
		d string
	}{{SectionKernel, "k"}, {SectionCmdline, "c"}} {
		if _, err := w.WriteSection(s.t, strings.NewReader(s.d)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := w.WriteSection(SectionRamdisk, &oddReader{b: data})
	if err != nil || n != int64(len(data)) {
		t.Fatalf("WriteSection: %d, %v", n, err)
	}
	m, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	ef, err := Open(bytes.NewReader(b.b), int64(len(b.b)))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ef.Verify()
	if err != nil || rep.Measurements != m || m.PCR1 != PCRHex(append([]byte("kc"), data...)) {
		t.Fatalf("verify: %v; %+v vs %+v", err, rep.Measurements, m)
	}
	got, _ := io.ReadAll(ef.Data(ef.Sections[2]))
	if !bytes.Equal(got, data) {
		t.Error("ramdisk data differs")
	}
}
