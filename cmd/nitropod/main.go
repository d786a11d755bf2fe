// Command nitropod builds, inspects and signs Enclave Image Files, runs
// container images in an emulated enclave, and manages licences.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Subcommands register themselves from their own files (eif.go, build.go,
// run.go, license.go, …) so that each area keeps its code apart.
var (
	// topCommands are added to `nitropod`.
	topCommands []*cobra.Command
	// eifCommands are added to `nitropod eif`.
	eifCommands []*cobra.Command
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "nitropod",
		Short:         "Build, inspect and run Enclave Image Files for AWS Nitro Enclaves",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	eif := &cobra.Command{
		Use:   "eif",
		Short: "Build, describe, measure, sign and transfer Enclave Image Files",
	}
	eif.AddCommand(eifCommands...)
	root.AddCommand(eif)
	root.AddCommand(topCommands...)
	return root
}

func main() {
	err := newRootCommand().Execute()
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "nitropod:", ee.err)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "nitropod:", err)
	os.Exit(1)
}
