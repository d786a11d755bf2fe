package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/eif/source"
	"github.com/nitropod/nitropod/podpcr"
)

func init() { topCommands = append(topCommands, newPCRCommand()) }

func newPCRCommand() *cobra.Command {
	var manifest, ociLayout, tarballPath, blobs, initPath, workload string
	var explain bool
	cmd := &cobra.Command{
		Use:   "pcr -f MANIFEST (IMAGE-REF | --oci-layout DIR | --tarball F) [--blobs DIR] [--init F]",
		Short: "Print the PCRs the enclave containers of a Pod template get on a node",
		Long: `Prints, for the Pod template of a Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or
CronJob manifest, the measurements each of its enclave containers will have on a node with this
blob set and init: one JSON object keyed by container name, each value nitro-cli's
{"HashAlgorithm", "PCR0", "PCR1", "PCR2"}.

It runs the node's code: the nitropod webhook's conversion of the template, the OCI spec
containerd's CRI writes for the container, the shim's split of measured and delivered
configuration, and the shim's EIF build over the image unpacked as containerd unpacks it.
Every replica of the template measures the same: names, hostnames, Secret and ConfigMap values,
service links and volume contents are delivered at start and not measured (README "Measured
and delivered"). Every enclave container is measured with the given image. Runs as root (the
image's file owners are measured).`,
		Example: `  nitropod pcr -f deploy.yaml --oci-layout ./app --blobs _output/blobs/emu --init _output/bin/nitropod-init`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if manifest == "" {
				return errors.New("give the manifest with -f MANIFEST")
			}
			sources := 0
			for _, s := range []string{ociLayout, tarballPath} {
				if s != "" {
					sources++
				}
			}
			if len(args) > 0 {
				sources++
			}
			if sources != 1 || len(args) > 1 {
				return errors.New("give exactly one image: IMAGE-REF, --oci-layout DIR or --tarball F")
			}
			if initPath == "" {
				return errors.New("--init is required: the nitropod-init the node's shim uses (init_path in its config)")
			}
			if err := build.CheckInit(initPath); err != nil {
				return fmt.Errorf("--init: %w", err)
			}
			b, err := os.ReadFile(manifest)
			if err != nil {
				return err
			}
			tpls, err := podpcr.Templates(b)
			if err != nil {
				return fmt.Errorf("%s: %w", manifest, err)
			}
			tpl, err := pickTemplate(tpls, workload)
			if err != nil {
				return err
			}
			var img v1.Image
			switch {
			case ociLayout != "":
				img, err = source.FromLayout(ociLayout, source.Options{})
			case tarballPath != "":
				img, err = source.FromTarball(tarballPath, source.Options{})
			default:
				img, err = source.FromRegistry(args[0], source.Options{}, remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithContext(cmd.Context()))
			}
			if err != nil {
				return err
			}
			opts := podpcr.Options{Blobs: blobs, Init: initPath}
			if explain {
				opts.Explain = cmd.ErrOrStderr()
			}
			out, warnings, err := podpcr.Measure(cmd.Context(), tpl, img, opts)
			for _, w := range warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			if err != nil {
				return err
			}
			if len(out) == 0 {
				return fmt.Errorf("%s %s has no enclave container", tpl.Kind, tpl.Name)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&manifest, "filename", "f", "", "manifest (YAML or JSON) with the workload")
	f.StringVar(&workload, "workload", "", "KIND/NAME of the workload when the manifest has several")
	f.StringVar(&ociLayout, "oci-layout", "", "OCI image layout directory")
	f.StringVar(&tarballPath, "tarball", "", "OCI archive or docker save tarball")
	f.StringVar(&blobs, "blobs", defaultBlobs(), "the node's blob set (blobs_dir in its shim config) [$NITROPOD_BLOBS]")
	f.StringVar(&initPath, "init", "", "the node's nitropod-init (init_path in its shim config)")
	f.BoolVar(&explain, "explain", false, "print each container's measured process description to stderr")
	return cmd
}

func pickTemplate(tpls []podpcr.Template, want string) (podpcr.Template, error) {
	var names []string
	for _, t := range tpls {
		id := t.Kind + "/" + t.Name
		if want == id || (want == "" && len(tpls) == 1) {
			return t, nil
		}
		names = append(names, id)
	}
	if want == "" {
		return podpcr.Template{}, fmt.Errorf("the manifest has %d workloads (%s); pick one with --workload KIND/NAME", len(tpls), strings.Join(names, ", "))
	}
	return podpcr.Template{}, fmt.Errorf("--workload %s is not in the manifest (it has %s)", want, strings.Join(names, ", "))
}
