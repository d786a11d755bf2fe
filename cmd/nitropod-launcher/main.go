// Command nitropod-launcher runs one enclave container for
// containerd-shim-nitro-v1; see package shim/launcher.
package main

import (
	"os"

	"github.com/nitropod/nitropod/shim/launcher"
)

func main() { os.Exit(launcher.Main(os.Args[1:])) }
