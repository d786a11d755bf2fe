// Command nitropod-fetch is containerd-shim-nitro-v1's short-lived helper
// for image EXPOSE lookups and prebuilt EIF downloads; see package
// shim/fetch.
package main

import (
	"os"

	"github.com/nitropod/nitropod/shim/fetch"
)

func main() { os.Exit(fetch.Main(os.Args[1:], os.Stdout, os.Stderr)) }
