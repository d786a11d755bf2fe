package s3test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"hash/crc32"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/eif"
)

// WriteEIF writes a structurally valid EIF of about kernelSize bytes (random
// "kernel" from seed, one small ramdisk) to path and returns its
// measurements. It is signed when signer is not nil. It cannot boot; use it
// for transfer tests.
func WriteEIF(t testing.TB, path string, kernelSize int64, seed uint64, signer *eif.Signer) eif.Measurements {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kernel := io.LimitReader(&randReader{r: mrand.NewChaCha8(seedBytes(seed))}, kernelSize)
	m, err := eif.Write(f, eif.Image{
		Kernel:   kernel,
		Cmdline:  "console=ttyS0",
		Ramdisks: []io.Reader{strings.NewReader("ramdisk")},
	}, eif.WriterOptions{Signer: signer})
	if err != nil {
		t.Fatalf("writing test eif: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return m
}

func seedBytes(s uint64) [32]byte {
	var b [32]byte
	binary.LittleEndian.PutUint64(b[:], s)
	return b
}

type randReader struct{ r *mrand.ChaCha8 }

func (r *randReader) Read(p []byte) (int, error) { return r.r.Read(p) }

// Signer makes an EIF signer with a fresh self-signed P-384 certificate.
func Signer(t testing.TB) *eif.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "nitropod test signer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	s, err := eif.NewSignerFromKey(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Tamper flips one byte of the EIF at offset off (past the header) and
// rewrites the header CRC, as an attacker who edits a signed image would:
// the file stays structurally valid, only its signature no longer verifies.
func Tamper(t testing.TB, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off < eif.HeaderSize || off >= int64(len(b)) {
		t.Fatalf("tamper offset %d outside the sections of a %d-byte file", off, len(b))
	}
	b[off] ^= 0xff
	crc := crc32.ChecksumIEEE(b[:eif.HeaderSize-4])
	crc = crc32.Update(crc, crc32.IEEETable, b[eif.HeaderSize:])
	binary.BigEndian.PutUint32(b[eif.HeaderSize-4:], crc)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
