// Package fetch is nitropod-fetch, the shim's short-lived helper for the
// two lookups that need large client libraries: an image's EXPOSEd ports
// (containerd's gRPC image and content API) and prebuilt EIFs from S3
// (package eif/s3, the AWS SDK). Running them in a process that exits keeps
// the Pod-lifetime shim small (about 5 MiB of resident memory each).
//
//	nitropod-fetch image-ports ADDRESS NAMESPACE IMAGE
//	    prints the image's EXPOSEd TCP ports as a JSON array
//	nitropod-fetch s3 -cache-dir D -cache-max-bytes N [-endpoint URL] [-region R] [-pcr0 H] [-pcr8 H] s3://BUCKET/KEY
//	    downloads (or finds) the EIF in the node cache, verifies it and prints
//	    {"key": CACHE-KEY, "downloaded": BOOL}
//
// Errors go to stderr, one line, and the exit code is 1.
package fetch

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/nitropod/nitropod/eif/s3"
	"github.com/nitropod/nitropod/eifcache"
)

// S3Result is what `nitropod-fetch s3` prints.
type S3Result struct {
	// Key is the eifcache key of the fetched EIF.
	Key string `json:"key"`
	// Downloaded is false when the cache already held it.
	Downloaded bool `json:"downloaded"`
}

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
	if len(args) == 0 {
		return nil, errors.New("usage: nitropod-fetch image-ports|s3 ... (run by containerd-shim-nitro-v1)")
	}
	switch args[0] {
	case "image-ports":
		if len(args) != 4 {
			return nil, errors.New("usage: nitropod-fetch image-ports ADDRESS NAMESPACE IMAGE")
		}
		ports, err := ImageExposedPorts(ctx, args[1], args[2], args[3])
		if ports == nil {
			ports = []uint16{}
		}
		return ports, err
	case "s3":
		fs := flag.NewFlagSet("s3", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		dir := fs.String("cache-dir", "", "EIF cache directory")
		maxBytes := fs.Int64("cache-max-bytes", 0, "EIF cache size cap")
		endpoint := fs.String("endpoint", "", "S3-compatible endpoint")
		region := fs.String("region", "", "bucket region")
		pcr0 := fs.String("pcr0", "", "expected PCR0")
		pcr8 := fs.String("pcr8", "", "expected PCR8")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 || *dir == "" {
			return nil, errors.New("usage: nitropod-fetch s3 -cache-dir DIR [-cache-max-bytes N] [-endpoint URL] [-region R] [-pcr0 HEX] [-pcr8 HEX] s3://BUCKET/KEY")
		}
		return S3(ctx, *dir, *maxBytes, s3.Config{Endpoint: *endpoint, Region: *region}, fs.Arg(0), s3.Expect{PCR0: *pcr0, PCR8: *pcr8})
	}
	return nil, fmt.Errorf("unknown nitropod-fetch command %q: use image-ports or s3", args[0])
}

// S3 makes the EIF at location available in the cache at dir and
// verified against exp, and returns its cache key.
func S3(ctx context.Context, dir string, maxBytes int64, cfg s3.Config, location string, exp s3.Expect) (*S3Result, error) {
	loc, err := s3.ParseLocation(location)
	if err != nil {
		return nil, err
	}
	cache, err := eifcache.Open(dir, maxBytes)
	if err != nil {
		return nil, err
	}
	cl, err := s3.New(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	res, err := cl.Fetch(ctx, cache, loc, exp)
	if err != nil {
		return nil, err
	}
	defer res.Release()
	return &S3Result{Key: s3.CacheKey(res.Object), Downloaded: res.Downloaded}, nil
}
