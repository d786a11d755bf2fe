package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/eif"
	eifs3 "github.com/nitropod/nitropod/eif/s3"
)

func init() { eifCommands = append(eifCommands, newEIFPushCommand(), newEIFPullCommand()) }

// s3Flags are the connection flags of push and pull. Credentials come from
// the AWS default chain (environment, shared files, web identity via
// AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, instance role), as in the shim.
type s3Flags struct {
	endpoint string
	region   string
}

func (f *s3Flags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.endpoint, "endpoint", os.Getenv("NITROPOD_S3_ENDPOINT"), "URL of an S3-compatible store (path-style); default AWS S3 [$NITROPOD_S3_ENDPOINT]")
	cmd.Flags().StringVar(&f.region, "region", "", "bucket region (default: AWS_REGION, the profile, or the bucket's region)")
}

func (f *s3Flags) client(ctx context.Context) (*eifs3.Client, error) {
	return eifs3.New(ctx, eifs3.Config{Endpoint: f.endpoint, Region: f.region})
}

// transferResult is what push and pull print (JSON).
type transferResult struct {
	Location     string           `json:"Location"`
	File         string           `json:"File"`
	Size         int64            `json:"Size"`
	ETag         string           `json:"ETag"`
	VersionID    string           `json:"VersionID,omitempty"`
	Measurements eif.Measurements `json:"Measurements"`
	Signed       bool             `json:"IsSigned"`
}

func printResult(w io.Writer, r transferResult) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func signalContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
}

func newEIFPushCommand() *cobra.Command {
	var sf s3Flags
	cmd := &cobra.Command{
		Use:   "push FILE s3://BUCKET/KEY",
		Short: "Upload a (signed) EIF to S3 for the imageLocation annotation",
		Long: `Checks that FILE is a valid EIF (CRC, and signature when signed) and uploads it.
Pods boot it with the annotation nitro.k8s.anjuna.io/imageLocation: "s3://BUCKET/KEY";
pin it with nitropod.io/expected-pcr0 (and nitropod.io/expected-pcr8) set to the printed values.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			loc, err := eifs3.ParseLocation(args[1])
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd)
			defer cancel()
			c, err := sf.client(ctx)
			if err != nil {
				return err
			}
			stop := watchTransfer(pushWhat(args[0]), nil)
			obj, rep, err := c.Push(ctx, args[0], loc)
			stop()
			if err != nil {
				return err
			}
			return printResult(cmd.OutOrStdout(), transferResult{Location: loc.String(), File: args[0], Size: obj.Size, ETag: obj.ETag,
				VersionID: obj.VersionID, Measurements: rep.Measurements, Signed: rep.Signed})
		},
	}
	sf.add(cmd)
	return cmd
}

func newEIFPullCommand() *cobra.Command {
	var (
		sf  s3Flags
		exp eifs3.Expect
	)
	cmd := &cobra.Command{
		Use:   "pull s3://BUCKET/KEY FILE",
		Short: "Download an EIF from S3, verified (CRC, signature, optional expected PCRs)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			loc, err := eifs3.ParseLocation(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd)
			defer cancel()
			c, err := sf.client(ctx)
			if err != nil {
				return err
			}
			stop := watchTransfer("downloading "+loc.String(), pulled(args[1]))
			obj, rep, err := c.Pull(ctx, loc, args[1], exp)
			stop()
			if err != nil {
				return err
			}
			return printResult(cmd.OutOrStdout(), transferResult{Location: loc.String(), File: args[1], Size: obj.Size, ETag: obj.ETag,
				VersionID: obj.VersionID, Measurements: rep.Measurements, Signed: rep.Signed})
		},
	}
	sf.add(cmd)
	cmd.Flags().StringVar(&exp.PCR0, "expected-pcr0", "", "fail unless the EIF's PCR0 is this (hex)")
	cmd.Flags().StringVar(&exp.PCR8, "expected-pcr8", "", "fail unless the EIF's PCR8 (signing certificate) is this (hex)")
	return cmd
}
