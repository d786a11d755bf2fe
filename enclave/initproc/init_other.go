//go:build !linux

package initproc

import (
	"fmt"
	"os"
)

// Main reports that nitropod-init runs only on Linux.
func Main() int {
	fmt.Fprintln(os.Stderr, "nitropod-init: unsupported platform: it runs as PID 1 of a Linux enclave")
	return 1
}
