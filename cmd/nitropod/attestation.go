package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/attestation"
	"github.com/nitropod/nitropod/enclave/qemu"
)

func init() {
	att := &cobra.Command{
		Use:   "attestation",
		Short: "Verify Nitro Enclaves attestation documents; show the emulation root",
		Long: `Attestation documents are what an enclave's NSM signs to prove which image
runs (its PCRs). In emulation nitropod emulates the NSM and signs with a
per-node emulation CA whose subject says "NOT AWS Nitro"; docs/ATTESTATION.md.`,
	}
	att.AddCommand(newAttestationVerifyCommand(), newAttestationRootCommand())
	topCommands = append(topCommands, att)
}

// maxDocumentInput bounds what verify reads (base64 or JSON of a document).
const maxDocumentInput = 1 << 20

func newAttestationVerifyCommand() *cobra.Command {
	var rootPath, nonceHex string
	var pcrFlags []string
	cmd := &cobra.Command{
		Use:   "verify DOC",
		Short: "Check an attestation document's signature, chain, validity, PCRs and nonce; print its payload as JSON",
		Long: `verify checks the COSE_Sign1 signature with the document's certificate, the
certificate's chain to the root (AWS's Nitro Enclaves root G1 unless --root
names another, e.g. this node's emulation root: nitropod attestation root),
each certificate's validity, the --pcr values and the --nonce, and prints the
payload as JSON. DOC is a file ("-" for stdin) holding the document as raw
CBOR, base64, or the attestation API's JSON ({"document": "…"}).
A failed check ends with exit status 1 and names the check.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := readDocument(cmd.InOrStdin(), args[0])
			if err != nil {
				return err
			}
			opts := attestation.VerifyOptions{PCRs: map[int][]byte{}}
			if rootPath != "" {
				b, err := os.ReadFile(rootPath)
				if err != nil {
					return fmt.Errorf("reading --root: %w", err)
				}
				if opts.Root, err = attestation.ParseRootPEM(b); err != nil {
					return fmt.Errorf("--root %s: %w", rootPath, err)
				}
			}
			for _, f := range pcrFlags {
				n, v, err := attestation.ParsePCRFlag(f)
				if err != nil {
					return fmt.Errorf("--pcr: %w", err)
				}
				if _, dup := opts.PCRs[n]; dup {
					return fmt.Errorf("--pcr: PCR%d given twice", n)
				}
				opts.PCRs[n] = v
			}
			if nonceHex != "" {
				if opts.Nonce, err = hex.DecodeString(nonceHex); err != nil {
					return fmt.Errorf("--nonce %q is not hex: %w", nonceHex, err)
				}
			}
			d, err := attestation.Verify(doc, opts)
			if err != nil {
				return err
			}
			b, err := json.MarshalIndent(payloadJSON(d), "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
			return err
		},
	}
	cmd.Flags().StringVar(&rootPath, "root", "", "PEM root certificate to trust instead of AWS's Nitro Enclaves root G1")
	cmd.Flags().StringArrayVar(&pcrFlags, "pcr", nil, "expected PCR as N=HEX (repeatable), e.g. --pcr 0=$(nitropod eif describe app.eif | jq -r .Measurements.PCR0)")
	cmd.Flags().StringVar(&nonceHex, "nonce", "", "expected nonce, in hex")
	return cmd
}

// readDocument reads DOC as raw CBOR, base64 or the API's JSON.
func readDocument(stdin io.Reader, path string) ([]byte, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(stdin, maxDocumentInput+1))
	} else {
		var f *os.File
		if f, err = os.Open(path); err == nil {
			b, err = io.ReadAll(io.LimitReader(f, maxDocumentInput+1))
			f.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("reading attestation document: %w", err)
	}
	if len(b) > maxDocumentInput {
		return nil, fmt.Errorf("attestation document %s is larger than %d bytes", path, maxDocumentInput)
	}
	if len(b) > 0 && (b[0] == 0x84 || b[0] == 0xd2) { // COSE_Sign1, untagged or tag 18
		return b, nil
	}
	t := bytes.TrimSpace(b)
	if bytes.HasPrefix(t, []byte("{")) {
		var v struct {
			Document []byte `json:"document"`
		}
		if err := json.Unmarshal(t, &v); err != nil {
			return nil, fmt.Errorf("attestation document %s is JSON without a base64 \"document\": %w", path, err)
		}
		if len(v.Document) == 0 {
			return nil, fmt.Errorf("attestation document %s is JSON without a base64 \"document\"", path)
		}
		return v.Document, nil
	}
	d, err := base64.StdEncoding.DecodeString(string(t))
	if err != nil {
		if d, err = base64.RawURLEncoding.DecodeString(strings.TrimRight(string(t), "=")); err != nil {
			return nil, fmt.Errorf("attestation document %s is neither CBOR (COSE_Sign1), base64 nor JSON", path)
		}
	}
	return d, nil
}

// documentJSON is the payload as verify prints it: PCRs and binary fields
// in hex, certificates in base64 DER.
type documentJSON struct {
	ModuleID    string            `json:"module_id"`
	Digest      string            `json:"digest"`
	Timestamp   uint64            `json:"timestamp"`
	Time        string            `json:"time"`
	PCRs        map[string]string `json:"pcrs"`
	Certificate string            `json:"certificate"`
	CABundle    []string          `json:"cabundle"`
	PublicKey   *string           `json:"public_key"`
	UserData    *string           `json:"user_data"`
	Nonce       *string           `json:"nonce"`
}

func payloadJSON(d *attestation.Document) documentJSON {
	hexOrNull := func(b []byte) *string {
		if b == nil {
			return nil
		}
		s := hex.EncodeToString(b)
		return &s
	}
	out := documentJSON{
		ModuleID: d.ModuleID, Digest: d.Digest, Timestamp: d.Timestamp,
		Time:        time.UnixMilli(int64(d.Timestamp)).UTC().Format(time.RFC3339Nano),
		PCRs:        map[string]string{},
		Certificate: base64.StdEncoding.EncodeToString(d.Certificate),
		PublicKey:   hexOrNull(d.PublicKey), UserData: hexOrNull(d.UserData), Nonce: hexOrNull(d.Nonce),
	}
	idx := make([]int, 0, len(d.PCRs))
	for i := range d.PCRs {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		out.PCRs[strconv.Itoa(i)] = hex.EncodeToString(d.PCRs[i])
	}
	for _, c := range d.CABundle {
		out.CABundle = append(out.CABundle, base64.StdEncoding.EncodeToString(c))
	}
	return out
}

func newAttestationRootCommand() *cobra.Command {
	var dir string
	var aws bool
	cmd := &cobra.Command{
		Use:   "root",
		Short: "Print this node's emulation root certificate (PEM), or AWS's with --aws",
		Long: `root prints the PEM root certificate that emulated attestation documents on
this node chain to (created by the first emulated enclave; its subject says
"NOT AWS Nitro"), for relying parties in development: nitropod attestation
verify --root. --dir names the CA directory (the QEMU backend's
AttestationDir; the shim's is <run_dir>/attestation). --aws prints AWS's
Nitro Enclaves root G1 instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if aws {
				_, err := cmd.OutOrStdout().Write(attestation.AWSRootPEM())
				return err
			}
			p := filepath.Join(dir, attestation.EmulationRootFile)
			b, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("reading the emulation root: %w (it is created when the first emulated enclave boots; --dir names another CA directory)", err)
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "dir", qemu.DefaultAttestationDir(), "emulation CA directory")
	cmd.Flags().BoolVar(&aws, "aws", false, "print AWS's Nitro Enclaves root G1 certificate instead")
	return cmd
}
