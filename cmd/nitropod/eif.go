package main

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/build"
)

func init() {
	eifCommands = append(eifCommands, newEIFBuildCommand(), newEIFDescribeCommand(), newEIFPCRCommand(), newEIFSignCommand())
}

// signFlags are the signing flags of `eif build` and `build`.
type signFlags struct{ cert, key string }

func (f *signFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.cert, "signing-certificate", "", "PEM certificate to sign the EIF with (EC key: P-256, P-384 or P-521)")
	cmd.Flags().StringVar(&f.key, "private-key", "", "PEM EC private key matching --signing-certificate")
}

func (f *signFlags) signer() (*eif.Signer, error) {
	if f.cert == "" && f.key == "" {
		return nil, nil
	}
	if f.cert == "" || f.key == "" {
		return nil, errors.New("signing needs both --signing-certificate and --private-key")
	}
	c, err := os.ReadFile(f.cert)
	if err != nil {
		return nil, fmt.Errorf("reading --signing-certificate: %w", err)
	}
	k, err := os.ReadFile(f.key)
	if err != nil {
		return nil, fmt.Errorf("reading --private-key: %w", err)
	}
	s, err := eif.NewSigner(c, k)
	if err != nil {
		return nil, fmt.Errorf("--signing-certificate %s / --private-key %s: %w", f.cert, f.key, err)
	}
	return s, nil
}

// metaFlags are the metadata flags of `eif build` and `build`.
type metaFlags struct{ name, version, metadata string }

func (f *metaFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.name, "name", "", "image name for the metadata section")
	cmd.Flags().StringVar(&f.version, "version", "", "image version for the metadata section")
	cmd.Flags().StringVar(&f.metadata, "metadata", "", "JSON file with custom metadata (at most 4096 bytes)")
}

func (f *metaFlags) custom() (json.RawMessage, error) {
	if f.metadata == "" {
		return nil, nil
	}
	b, err := os.ReadFile(f.metadata)
	if err != nil {
		return nil, fmt.Errorf("reading --metadata: %w", err)
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("--metadata %s is not valid JSON", f.metadata)
	}
	return b, nil
}

// measurementsOutput is what build commands print, like nitro-cli build-enclave.
type measurementsOutput struct {
	Measurements eif.Measurements `json:"Measurements"`
}

func printJSON(w io.Writer, v any) error {
	b, err := eif.MarshalIndent(v)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// writeAtomic creates path through a temporary file in the same directory,
// renamed into place only when write succeeds.
func writeAtomic(path string, write func(f *os.File) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func newEIFBuildCommand() *cobra.Command {
	var (
		kernel, cmdline, output string
		ramdisks                []string
		sf                      signFlags
		mf                      metaFlags
	)
	cmd := &cobra.Command{
		Use:   "build --kernel F --cmdline S --ramdisk F [--ramdisk F…] --output F",
		Short: "Write an EIF from a kernel, a command line and ramdisks (like nitro-cli build-enclave)",
		Long: `Writes the sections in AWS's order (kernel, cmdline, metadata, ramdisks, signature)
and prints the measurements as nitro-cli build-enclave does. The first ramdisk is the
bootstrap ramdisk (PCR1), the others are customer ramdisks (PCR2).
SOURCE_DATE_EPOCH fixes the metadata build time.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kernel == "" || output == "" || len(ramdisks) == 0 {
				return errors.New("--kernel, --ramdisk and --output are required")
			}
			signer, err := sf.signer()
			if err != nil {
				return err
			}
			custom, err := mf.custom()
			if err != nil {
				return err
			}
			bt, err := build.TimeFromEnv()
			if err != nil {
				return err
			}
			var files []*os.File
			defer func() {
				for _, f := range files {
					f.Close()
				}
			}()
			open := func(p string) (*os.File, error) {
				f, err := os.Open(p)
				if err != nil {
					return nil, err
				}
				files = append(files, f)
				return f, nil
			}
			k, err := open(kernel)
			if err != nil {
				return fmt.Errorf("--kernel: %w", err)
			}
			osName, kernelVersion := (&build.BlobSet{Kernel: kernel}).OSAndKernel()
			img := eif.Image{Kernel: k, Cmdline: cmdline, Metadata: &eif.Metadata{
				ImageName: mf.name, ImageVersion: mf.version,
				Build: eif.BuildMetadata{
					BuildTime: eif.FormatBuildTime(bt), BuildTool: build.Tool, BuildToolVersion: version(),
					OperatingSystem: osName, KernelVersion: kernelVersion,
				},
				CustomMetadata: custom,
			}}
			for _, r := range ramdisks {
				f, err := open(r)
				if err != nil {
					return fmt.Errorf("--ramdisk: %w", err)
				}
				img.Ramdisks = append(img.Ramdisks, f)
			}
			var m eif.Measurements
			err = writeAtomic(output, func(f *os.File) error {
				m, err = eif.Write(f, img, eif.WriterOptions{Signer: signer})
				return err
			})
			if err != nil {
				return fmt.Errorf("building %s: %w", output, err)
			}
			return printJSON(cmd.OutOrStdout(), measurementsOutput{m})
		},
	}
	cmd.Flags().StringVar(&kernel, "kernel", "", "kernel image (bzImage)")
	cmd.Flags().StringVar(&cmdline, "cmdline", "", "kernel command line")
	cmd.Flags().StringArrayVar(&ramdisks, "ramdisk", nil, "ramdisk (cpio); repeat, bootstrap ramdisk first")
	cmd.Flags().StringVar(&output, "output", "", "EIF file to write")
	sf.add(cmd)
	mf.add(cmd)
	return cmd
}

func newEIFDescribeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "describe FILE",
		Short: "Validate an EIF and print its measurements and metadata (like nitro-cli describe-eif)",
		Long: `Checks the structure, the CRC and (for signed images) the signature, and prints
EifVersion, Measurements, IsSigned, CheckCRC, CheckSignature, ImageName, ImageVersion
and Metadata. Exits non-zero when the CRC or the signature check fails.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			ef, err := eif.Open(f, fi.Size())
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			rep, verr := ef.Verify()
			if rep == nil {
				return fmt.Errorf("%s: %w", args[0], verr)
			}
			d, err := eif.Describe(ef, rep)
			if err != nil {
				return err
			}
			if err := printJSON(cmd.OutOrStdout(), d); err != nil {
				return err
			}
			if verr != nil {
				return &exitError{code: 1, err: fmt.Errorf("%s: %w", args[0], verr)}
			}
			return nil
		},
	}
}

func newEIFPCRCommand() *cobra.Command {
	var input, cert string
	cmd := &cobra.Command{
		Use:   "pcr (--input F | --signing-certificate C)",
		Short: "Print the PCR of a file, or PCR8 of a signing certificate (like nitro-cli pcr)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case (input == "") == (cert == ""):
				return errors.New("give exactly one of --input and --signing-certificate")
			case cert != "":
				b, err := os.ReadFile(cert)
				if err != nil {
					return err
				}
				if !strings.Contains(string(b), "-----BEGIN CERTIFICATE-----") {
					return fmt.Errorf("--signing-certificate %s is not a PEM certificate", cert)
				}
				pcr, err := eif.CertificatePCR(b)
				if err != nil {
					return fmt.Errorf("--signing-certificate %s: %w", cert, err)
				}
				return printJSON(cmd.OutOrStdout(), map[string]string{"PCR8": pcr})
			}
			f, err := os.Open(input)
			if err != nil {
				return err
			}
			defer f.Close()
			h := sha512.New384()
			if _, err := io.Copy(h, f); err != nil {
				return fmt.Errorf("reading %s: %w", input, err)
			}
			return printJSON(cmd.OutOrStdout(), map[string]string{"PCR": hex.EncodeToString(eif.PCR(h.Sum(nil)))})
		},
	}
	cmd.Flags().StringVar(&input, "input", "", "file to measure")
	cmd.Flags().StringVar(&cert, "signing-certificate", "", "PEM signing certificate (prints PCR8)")
	return cmd
}

func newEIFSignCommand() *cobra.Command {
	var sf signFlags
	cmd := &cobra.Command{
		Use:   "sign FILE --signing-certificate C --private-key K",
		Short: "Sign an EIF in place, replacing any signature (like nitro-cli sign-eif)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if sf.cert == "" || sf.key == "" {
				return errors.New("--signing-certificate and --private-key are required")
			}
			signer, err := sf.signer()
			if err != nil {
				return err
			}
			f, err := os.OpenFile(args[0], os.O_RDWR, 0)
			if err != nil {
				return err
			}
			m, err := eif.SignFile(f, signer)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return printJSON(cmd.OutOrStdout(), measurementsOutput{m})
		},
	}
	sf.add(cmd)
	return cmd
}
