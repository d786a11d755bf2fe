package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/attestation"
)

func runAttestationCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "nitropod", SilenceUsage: true, SilenceErrors: true}
	att := &cobra.Command{Use: "attestation"}
	att.AddCommand(newAttestationVerifyCommand(), newAttestationRootCommand())
	root.AddCommand(att)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestAttestationVerifyCLI(t *testing.T) {
	caDir := t.TempDir()
	ca, err := attestation.LoadOrCreateCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ca.NewSigner("i-cli-enc1")
	if err != nil {
		t.Fatal(err)
	}
	pcr0 := bytes.Repeat([]byte{0x42}, 48)
	pcrs := attestation.PCRs{}
	for i := range 16 {
		pcrs[i] = make([]byte, 48)
	}
	pcrs[0] = pcr0
	doc, err := s.Sign(&attestation.Document{PCRs: pcrs, Nonce: []byte{0xca, 0xfe}, UserData: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	api, _ := json.Marshal(map[string][]byte{"document": doc})
	rootPEM := filepath.Join(caDir, attestation.EmulationRootFile)
	for _, p := range []string{write("doc.cbor", doc), write("doc.b64", []byte(base64.StdEncoding.EncodeToString(doc)+"\n")), write("doc.json", api)} {
		out, err := runAttestationCLI(t, "attestation", "verify", p, "--root", rootPEM, "--pcr", "0="+hex.EncodeToString(pcr0), "--nonce", "cafe")
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		var got documentJSON
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%s: output is not JSON: %v\n%s", p, err, out)
		}
		if got.ModuleID != "i-cli-enc1" || got.PCRs["0"] != hex.EncodeToString(pcr0) || *got.UserData != hex.EncodeToString([]byte("hi")) || got.PublicKey != nil {
			t.Errorf("%s: payload %+v", p, got)
		}
	}
	flipped := bytes.Clone(doc)
	flipped[len(flipped)-3] ^= 0x80
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"flipped byte": {[]string{write("bad.cbor", flipped), "--root", rootPEM}, "signature check failed"},
		"aws root":     {[]string{write("d.cbor", doc)}, "certificate chain check failed"},
		"pcr":          {[]string{write("d.cbor", doc), "--root", rootPEM, "--pcr", "0=" + strings.Repeat("00", 48)}, "pcr check failed: PCR0"},
		"nonce":        {[]string{write("d.cbor", doc), "--root", rootPEM, "--nonce", "beef"}, "nonce check failed"},
		"bad pcr flag": {[]string{write("d.cbor", doc), "--pcr", "zero=00"}, "PCR index"},
		"not a doc":    {[]string{write("junk", []byte("%%%"))}, "neither CBOR"},
		"no root file": {[]string{write("d.cbor", doc), "--root", filepath.Join(dir, "missing.pem")}, "reading --root"},
	} {
		_, err := runAttestationCLI(t, append([]string{"attestation", "verify"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
	out, err := runAttestationCLI(t, "attestation", "root", "--dir", caDir)
	if err != nil || !strings.Contains(out, "BEGIN CERTIFICATE") {
		t.Errorf("root: %v %s", err, out)
	}
	if _, err := runAttestationCLI(t, "attestation", "root", "--dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "first emulated enclave") {
		t.Errorf("root without a CA: %v", err)
	}
	out, err = runAttestationCLI(t, "attestation", "root", "--aws")
	if c, perr := attestation.ParseRootPEM([]byte(out)); err != nil || perr != nil || attestation.Fingerprint(c) != attestation.AWSRootFingerprint {
		t.Errorf("root --aws: %v %v", err, perr)
	}
}
