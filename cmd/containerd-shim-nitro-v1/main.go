// Command containerd-shim-nitro-v1 is nitropod's containerd shim v2 (runtime
// type io.containerd.nitro.v1): one shim per Pod runs the pause container
// and non-enclave containers through runc and app containers as enclaves.
// See package shim.
package main

import (
	"context"

	"github.com/containerd/containerd/runtime/v2/shim"

	nitroshim "github.com/nitropod/nitropod/shim"
)

func main() { shim.RunManager(context.Background(), nitroshim.NewManager()) }
