package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/license"
)

func init() { topCommands = append(topCommands, newLicenseCommand()) }

// licensePub is an issuer public key.
type licensePub = ed25519.PublicKey

func newLicenseCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "license",
		Short: "Make signing keys, issue and verify nitropod licences",
		Long: `A licence is a YAML file signed with Ed25519. Nodes trust one or more issuer
public keys; Pods carry the licence in the anjuna-license Secret (key license.yaml).`,
	}
	cmd.AddCommand(newLicenseKeygenCommand(), newLicenseIssueCommand(), newLicenseVerifyCommand())
	return cmd
}

func newLicenseKeygenCommand() *cobra.Command {
	var priv, pub string
	cmd := &cobra.Command{
		Use:   "keygen --private-key FILE --public-key FILE",
		Short: "Make an Ed25519 issuer key pair (PEM files)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := license.GenerateKey(nil)
			if err != nil {
				return err
			}
			pk, err := license.MarshalPrivateKey(k)
			if err != nil {
				return err
			}
			pp, err := license.MarshalPublicKey(k.Public().(licensePub))
			if err != nil {
				return err
			}
			if err := writeNew(priv, pk, 0o600); err != nil {
				return err
			}
			if err := os.WriteFile(pub, pp, 0o644); err != nil {
				return fmt.Errorf("writing public key: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key %s: private key %s, public key %s\n", license.KeyID(k.Public().(licensePub)), priv, pub)
			return nil
		},
	}
	cmd.Flags().StringVar(&priv, "private-key", "license-issuer.key", "where to write the private key (must not exist)")
	cmd.Flags().StringVar(&pub, "public-key", "license-issuer.pub", "where to write the public key (give it to the nodes)")
	return cmd
}

// writeNew writes a file that must not exist yet (never overwrite a key).
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists: remove it or choose another --private-key path", path)
	}
	if err != nil {
		return fmt.Errorf("writing private key: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing private key: %w", err)
	}
	return f.Close()
}

func newLicenseIssueCommand() *cobra.Command {
	var (
		keyFile, licensee, issued, expires, out string
		terms                                   license.Terms
	)
	cmd := &cobra.Command{
		Use:   "issue --key FILE --licensee NAME --expires DATE [flags]",
		Short: "Sign a licence",
		Example: `  nitropod license issue --key issuer.key --licensee "Example Corp" --expires 2027-01-31 \
    --namespace default -o anjuna-license.yaml
  kubectl create secret generic anjuna-license --from-file=license.yaml=anjuna-license.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kb, err := os.ReadFile(keyFile)
			if err != nil {
				return fmt.Errorf("reading signing key: %w", err)
			}
			k, err := license.ParsePrivateKey(kb)
			if err != nil {
				return fmt.Errorf("reading signing key %s: %w", keyFile, err)
			}
			terms.Licensee = licensee
			terms.Issued = time.Now().UTC().Truncate(time.Second)
			if issued != "" {
				if terms.Issued, err = license.ParseTime(issued); err != nil {
					return fmt.Errorf("--issued: %w", err)
				}
			}
			if terms.Expires, err = license.ParseTime(expires); err != nil {
				return fmt.Errorf("--expires: %w", err)
			}
			b, err := license.Issue(terms, k)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			return os.WriteFile(out, b, 0o644)
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "key", "", "issuer private key (from `nitropod license keygen`)")
	f.StringVar(&licensee, "licensee", "", "who the licence is for")
	f.StringVar(&issued, "issued", "", "first valid date (2026-01-31 or RFC 3339; default now)")
	f.StringVar(&expires, "expires", "", "expiry date, exclusive (2027-01-31 or RFC 3339)")
	f.IntVar(&terms.Limits.MaxEnclavesPerPod, "max-enclaves-per-pod", 0, "limit of enclaves per Pod (0: unlimited)")
	f.IntVar(&terms.Limits.MaxEnclavesPerNode, "max-enclaves-per-node", 0, "limit of enclaves per node (0: unlimited)")
	f.StringSliceVar(&terms.Limits.Namespaces, "namespace", nil, "allowed namespace (repeatable; none: all)")
	f.StringVar(&terms.Limits.Cluster, "cluster", "", "bind the licence to this cluster ID (the nodes' license.cluster_id, e.g. the kube-system namespace UID; none: any cluster)")
	f.StringVarP(&out, "output", "o", "", "licence file to write (default stdout)")
	for _, n := range []string{"key", "licensee", "expires"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

func newLicenseVerifyCommand() *cobra.Command {
	var (
		keyFiles []string
		at       string
		c        license.Context
	)
	cmd := &cobra.Command{
		Use:   "verify --public-key FILE [flags] LICENSE-FILE",
		Short: "Check a licence as a node would (signature, dates, limits)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var keys []licensePub
			for _, kf := range keyFiles {
				b, err := os.ReadFile(kf)
				if err != nil {
					return fmt.Errorf("reading public key: %w", err)
				}
				ks, err := license.ParsePublicKeys(b)
				if err != nil {
					return fmt.Errorf("reading public key %s: %w", kf, err)
				}
				keys = append(keys, ks...)
			}
			now := time.Now()
			if at != "" {
				var err error
				if now, err = license.ParseTime(at); err != nil {
					return fmt.Errorf("--at: %w", err)
				}
			}
			data, err := license.ReadFile(args[0])
			if err != nil {
				return err
			}
			l, err := license.Verify(data, keys, now, c)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			lim := "none"
			if l.Limits != nil {
				lim = fmt.Sprintf("%d enclaves per Pod, %d per node, namespaces [%s] (0/empty: unlimited)",
					l.Limits.MaxEnclavesPerPod, l.Limits.MaxEnclavesPerNode, strings.Join(l.Limits.Namespaces, ", "))
				if l.Limits.Cluster != "" {
					lim += fmt.Sprintf(", cluster %q", l.Limits.Cluster)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "valid licence for %q, issued %s, expires %s, signed by key %s; limits: %s\n",
				l.Licensee, l.Issued.UTC().Format(time.RFC3339), l.Expires.UTC().Format(time.RFC3339), l.KeyID, lim)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&keyFiles, "public-key", nil, "trusted issuer public key file (repeatable)")
	f.StringVar(&at, "at", "", "check validity at this time instead of now")
	f.StringVar(&c.Namespace, "namespace", "", "check that this namespace is allowed")
	f.IntVar(&c.EnclavesInPod, "enclaves-in-pod", 0, "check the per-Pod limit for this many enclaves")
	f.IntVar(&c.EnclavesOnNode, "enclaves-on-node", 0, "check the per-node limit for this many enclaves")
	f.StringVar(&c.Cluster, "cluster", "", "the node's cluster ID (license.cluster_id), for a licence bound to a cluster")
	_ = cmd.MarkFlagRequired("public-key")
	return cmd
}
