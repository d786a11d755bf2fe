// Command nitropod builds, inspects and signs Enclave Image Files, runs
// container images in an emulated enclave, and manages licences.
package main

import (
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
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "nitropod:", err)
		var ec interface{ ExitCode() int }
		if errorsAs(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}
