// Command nitropod-init is PID 1 inside every nitropod enclave; see package
// enclave/initproc. Build it static: CGO_ENABLED=0 go build.
package main

import (
	"os"

	"github.com/nitropod/nitropod/enclave/initproc"
)

func main() { os.Exit(initproc.Main()) }
