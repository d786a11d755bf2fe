package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/crc32"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/eif"
)

// runEIFCLI runs the eif and build commands, built fresh for each call so
// that no flag value carries over; it returns stdout.
func runEIFCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "nitropod", SilenceUsage: true, SilenceErrors: true}
	eifCmd := &cobra.Command{Use: "eif"}
	eifCmd.AddCommand(newEIFBuildCommand(), newEIFDescribeCommand(), newEIFPCRCommand(), newEIFSignCommand())
	root.AddCommand(eifCmd, newBuildCommand())
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	d := t.TempDir()
	for n, c := range files {
		p := filepath.Join(d, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func testCertFiles(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cli"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(k)
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestEIFBuildVector reproduces the test vector of docs/EIF-FORMAT.md.
func TestEIFBuildVector(t *testing.T) {
	d := writeFiles(t, map[string]string{"kernel": "KERNEL", "r0": "R0", "r1": "R1"})
	out, err := runEIFCLI(t, "eif", "build", "--kernel", filepath.Join(d, "kernel"), "--cmdline", "console=ttyS0",
		"--ramdisk", filepath.Join(d, "r0"), "--ramdisk", filepath.Join(d, "r1"), "--output", filepath.Join(d, "v.eif"))
	if err != nil {
		t.Fatalf("eif build: %v", err)
	}
	var got measurementsOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	want := eif.Measurements{
		HashAlgorithm: "Sha384 { ... }",
		PCR0:          "a65ec572727fe7199e8b03384cd7681d8cf70426ad14efc9199f9334d636389ca2d30ebd5274c846f5f51bb16eac6b91",
		PCR1:          "daeea64efa71e4b6dd2433401ca4eb6eba8080ea1f38c0a6ee008c7899a1ff9818be4d81ce26147a0381f96eb7fd4221",
		PCR2:          "ce0dc93d7b5412312ec312a0c77d7b946a9e9969183cab4b6bec4a4a3a5c9bc1280b8b864cb0d1494588d292c5b4832c",
	}
	if d := cmp.Diff(want, got.Measurements); d != "" {
		t.Errorf("measurements (-want +got):\n%s", d)
	}
}

func TestEIFDescribe(t *testing.T) {
	d := writeFiles(t, map[string]string{"kernel": "KERNEL", "r0": "R0", "r1": "R1", "md.json": `{"owner":"me"}`})
	cert, key := testCertFiles(t, d)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	p := filepath.Join(d, "s.eif")
	out, err := runEIFCLI(t, "eif", "build", "--kernel", filepath.Join(d, "kernel"), "--cmdline", "console=ttyS0",
		"--ramdisk", filepath.Join(d, "r0"), "--ramdisk", filepath.Join(d, "r1"), "--output", p,
		"--signing-certificate", cert, "--private-key", key, "--name", "app", "--version", "2", "--metadata", filepath.Join(d, "md.json"))
	if err != nil {
		t.Fatalf("eif build: %v", err)
	}
	var built measurementsOutput
	if err := json.Unmarshal([]byte(out), &built); err != nil {
		t.Fatal(err)
	}
	if built.Measurements.PCR8 == "" {
		t.Fatalf("signed build printed no PCR8: %s", out)
	}

	out, err = runEIFCLI(t, "eif", "describe", p)
	if err != nil {
		t.Fatalf("describe: %v\n%s", err, out)
	}
	var desc map[string]any
	if err := json.Unmarshal([]byte(out), &desc); err != nil {
		t.Fatal(err)
	}
	md, _ := desc["Metadata"].(map[string]any)
	if desc["EifVersion"] != 4.0 || desc["IsSigned"] != true || desc["CheckCRC"] != true || desc["CheckSignature"] != true || desc["SignatureCheck"] != true ||
		desc["ImageName"] != "app" || desc["ImageVersion"] != "2" || md["BuildTime"] != "2023-11-14T22:13:20+00:00" || md["owner"] != "me" {
		t.Errorf("describe output:\n%s", out)
	}
	sc, _ := desc["SigningCertificate"].(map[string]any)
	issuer, _ := sc["IssuerName"].(map[string]any)
	if issuer["commonName"] != "cli" || sc["Algorithm"] != "ecdsa-with-SHA384" || !strings.HasSuffix(fmt.Sprint(sc["NotAfter"]), " GMT") {
		t.Errorf("SigningCertificate = %v", sc)
	}
	var dm struct{ Measurements eif.Measurements }
	if err := json.Unmarshal([]byte(out), &dm); err != nil {
		t.Fatal(err)
	}
	if dm.Measurements != built.Measurements {
		t.Errorf("describe measurements %+v, build printed %+v", dm.Measurements, built.Measurements)
	}

	// pcr --signing-certificate agrees with PCR8.
	out, err = runEIFCLI(t, "eif", "pcr", "--signing-certificate", cert)
	if err != nil || !bytes.Contains([]byte(out), []byte(built.Measurements.PCR8)) {
		t.Errorf("pcr --signing-certificate: %v\n%s", err, out)
	}
	// pcr --input of a file is the PCR of its content.
	out, err = runEIFCLI(t, "eif", "pcr", "--input", filepath.Join(d, "r1"))
	if err != nil || !strings.Contains(out, `"PCR": "`+eif.PCRHex([]byte("R1"))+`"`) {
		t.Errorf("pcr --input: %v\n%s", err, out)
	}

	// Re-signing in place with another key changes PCR8 only.
	cert2, key2 := testCertFiles(t, t.TempDir())
	out, err = runEIFCLI(t, "eif", "sign", p, "--signing-certificate", cert2, "--private-key", key2)
	var resigned measurementsOutput
	if err != nil || json.Unmarshal([]byte(out), &resigned) != nil {
		t.Fatalf("eif sign: %v\n%s", err, out)
	}
	if resigned.Measurements.PCR0 != built.Measurements.PCR0 || resigned.Measurements.PCR8 == built.Measurements.PCR8 {
		t.Errorf("re-signed measurements %+v", resigned.Measurements)
	}
	if _, err := runEIFCLI(t, "eif", "describe", p); err != nil {
		t.Errorf("describe after re-signing: %v", err)
	}

	// A tampered signed image (CRC fixed up): the signature check fails.
	tb, _ := os.ReadFile(p)
	tf, _ := eif.Open(bytes.NewReader(tb), int64(len(tb)))
	rd, _ := tf.First(eif.SectionRamdisk)
	tb[rd.DataOffset()] ^= 1
	crc := crc32.ChecksumIEEE(append(append([]byte{}, tb[:544]...), tb[548:]...))
	binary.BigEndian.PutUint32(tb[544:], crc)
	tampered := filepath.Join(d, "tampered.eif")
	if err := os.WriteFile(tampered, tb, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = runEIFCLI(t, "eif", "describe", tampered)
	if !errors.Is(err, eif.ErrSignature) || !strings.Contains(out, `"SignatureCheck": false`) || !strings.Contains(out, `"CheckCRC": true`) {
		t.Errorf("describe of a tampered signed EIF: err = %v\n%s", err, out)
	}

	// A flipped byte: describe prints the report and fails.
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 0x40
	bad := filepath.Join(d, "bad.eif")
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = runEIFCLI(t, "eif", "describe", bad)
	var ee *exitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 || !errors.Is(err, eif.ErrCRC) {
		t.Fatalf("describe of a corrupted EIF: err = %v", err)
	}
	if err := json.Unmarshal([]byte(out), &desc); err != nil {
		t.Fatalf("describe output is not JSON: %v\n%s", err, out)
	}
	if desc["CheckCRC"] != false {
		t.Errorf("CheckCRC = %v, want false\n%s", desc["CheckCRC"], out)
	}
}
