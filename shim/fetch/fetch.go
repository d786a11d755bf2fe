// Package fetch is nitropod-fetch, the shim's short-lived helper for
// lookups that need a large client library: an image's EXPOSEd ports
// through containerd's gRPC image and content API, and a container's device
// allocation through kubelet's gRPC pod-resources API. Running them in a
// process that exits keeps the gRPC client (about 4 MiB of resident memory)
// out of the Pod-lifetime shim.
//
//	nitropod-fetch image-ports ADDRESS NAMESPACE IMAGE
//	    prints the image's EXPOSEd TCP ports as a JSON array
//	nitropod-fetch pod-devices SOCKET NAMESPACE POD CONTAINER
//	    prints the devices kubelet allocated to the container as a JSON
//	    object from resource name to device IDs
//
// Errors go to stderr, one line, and the exit code is 1.
package fetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"
)

// Main runs the helper and returns its exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	out, err := run(ctx, args)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := json.NewEncoder(stdout).Encode(out); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

func run(ctx context.Context, args []string) (any, error) {
	const usage = "usage: nitropod-fetch image-ports ADDRESS NAMESPACE IMAGE | pod-devices SOCKET NAMESPACE POD CONTAINER (run by containerd-shim-nitro-v1)"
	if len(args) == 0 {
		return nil, errors.New(usage)
	}
	switch args[0] {
	case "image-ports":
		if len(args) != 4 {
			return nil, errors.New(usage)
		}
		ports, err := ImageExposedPorts(ctx, args[1], args[2], args[3])
		if ports == nil {
			ports = []uint16{}
		}
		return ports, err
	case "pod-devices":
		if len(args) != 5 {
			return nil, errors.New(usage)
		}
		return PodDevices(ctx, args[1], args[2], args[3], args[4])
	}
	return nil, fmt.Errorf("unknown nitropod-fetch command %q: use image-ports or pod-devices", args[0])
}
