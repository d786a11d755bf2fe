// Package local runs a container image in an emulated enclave on this
// machine: the logic behind `nitropod run`. It builds the image's EIF (or
// reuses it from a content-keyed cache, or boots a given EIF), boots it with
// the QEMU backend and runs it with enclave.Run, streaming the app's output,
// publishing ports on the host and passing signals on.
package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/eif/source"
	"github.com/nitropod/nitropod/eifcache"
	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/qemu"
)

// Options describe one `nitropod run`.
type Options struct {
	// Exactly one image source: a registry reference, an OCI layout
	// directory, a tarball (docker save or OCI archive), or a prebuilt EIF.
	Ref, OCILayout, Tarball, EIF string
	// Overrides change the image's process (command, env, working dir, user).
	Overrides build.Overrides
	// Publish lists the ports to forward from the host into the enclave.
	Publish []enclave.PortMapping
	// CPUs and MemoryMiB size the enclave; 0 picks DefaultCPUs and
	// max(DefaultMemoryMiB, 4× the EIF size).
	CPUs, MemoryMiB int
	// Debug boots a debug enclave: its kernel console goes to Console.
	Debug bool
	// Blobs is the blob set directory, Init the nitropod-init binary.
	Blobs, Init string
	// CacheDir holds built EIFs ("" disables the cache: each run builds into
	// WorkDir).
	CacheDir string
	// WorkDir holds temporary files ("" is os.TempDir()).
	WorkDir string
	// QEMU configures the backend (binary, accelerator).
	QEMU qemu.Config

	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Console receives the kernel console in debug mode (nil: Stderr).
	Console io.Writer
	// Signals are passed to the app; os.Interrupt is sent as SIGTERM.
	Signals <-chan os.Signal
	// GracePeriod is the time between the first SIGTERM and termination.
	GracePeriod time.Duration
	// Progress, when set, gets short status lines (building, booting, ready).
	Progress func(string)
}

// Defaults for the enclave size.
const (
	DefaultCPUs      = 2
	DefaultMemoryMiB = 256
)

// Run runs the image described by opts until its app exits and returns the
// app's exit status.
func Run(ctx context.Context, opts Options) (enclave.ExitStatus, error) {
	progress := opts.Progress
	if progress == nil {
		progress = func(string) {}
	}
	start := time.Now()
	path, release, err := PrepareEIF(ctx, opts, progress)
	if err != nil {
		return enclave.ExitStatus{}, err
	}
	defer release()
	fi, err := os.Stat(path)
	if err != nil {
		return enclave.ExitStatus{}, fmt.Errorf("opening eif: %w", err)
	}
	mem := opts.MemoryMiB
	if mem == 0 {
		mem = max(DefaultMemoryMiB, int((4*fi.Size()+(1<<20)-1)>>20))
	}
	cpus := opts.CPUs
	if cpus == 0 {
		cpus = DefaultCPUs
	}
	qc := opts.QEMU
	if qc.WorkDir == "" {
		qc.WorkDir = opts.WorkDir
	}
	b, err := qemu.New(qc)
	if err != nil {
		return enclave.ExitStatus{}, err
	}
	console := opts.Console
	if console == nil {
		console = opts.Stderr
	}
	req := enclave.Request{
		Name: "nitropod-run", EIFPath: path, CPUs: cpus, MemoryMiB: mem, Debug: opts.Debug,
	}
	if opts.Debug {
		req.Console = console
	}
	sigs := make(chan os.Signal, 4)
	go func() {
		for s := range opts.Signals {
			if s == os.Interrupt {
				s = syscall.SIGTERM
			}
			sigs <- s
		}
	}()
	var bootAt time.Time
	return enclave.Run(ctx, b, req, enclave.RunIO{
		Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr,
		Publish: opts.Publish, Signals: sigs, GracePeriod: opts.GracePeriod,
		Progress: func(stage string) {
			switch stage {
			case enclave.StageBooting:
				bootAt = time.Now()
				progress(fmt.Sprintf("booting enclave (%d vCPU, %d MiB)", cpus, mem))
			case enclave.StageStarted:
				progress(fmt.Sprintf("ready: app started (boot %.1fs, total %.1fs)", time.Since(bootAt).Seconds(), time.Since(start).Seconds()))
			}
		},
	})
}

// PrepareEIF returns the EIF to boot: opts.EIF, or the image's EIF from
// the cache (building it on a miss). release frees the cache entry or the
// temporary file.
func PrepareEIF(ctx context.Context, opts Options, progress func(string)) (path string, release func(), err error) {
	if progress == nil {
		progress = func(string) {}
	}
	n := 0
	for _, s := range []string{opts.Ref, opts.OCILayout, opts.Tarball, opts.EIF} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return "", nil, errors.New("give exactly one image: IMAGE, --oci-layout DIR, --tarball FILE or --eif FILE")
	}
	if opts.EIF != "" {
		if _, err := os.Stat(opts.EIF); err != nil {
			return "", nil, fmt.Errorf("eif %s: %w", opts.EIF, err)
		}
		return opts.EIF, func() {}, nil
	}
	if opts.Init == "" {
		return "", nil, errors.New("no nitropod-init binary: build it (make build) or pass --init")
	}
	if _, err := os.Stat(opts.Init); err != nil {
		return "", nil, fmt.Errorf("nitropod-init binary %s: %w (make build, or pass --init)", opts.Init, err)
	}
	blobs, err := build.LoadBlobSet(opts.Blobs)
	if err != nil {
		return "", nil, fmt.Errorf("%w (or set NITROPOD_BLOBS / --blobs)", err)
	}
	img, what, err := openImage(opts)
	if err != nil {
		return "", nil, err
	}
	bopts := build.Options{Blobs: opts.Blobs, Init: opts.Init, DebugCmdline: opts.Debug, BuildTime: time.Unix(0, 0).UTC()}
	fill := func(ctx context.Context, w io.WriteSeeker) error {
		progress("building EIF from " + what)
		_, err := build.FromImage(w, img, opts.Overrides, bopts)
		return err
	}
	if opts.CacheDir == "" {
		f, err := os.CreateTemp(opts.WorkDir, "nitropod-run-*.eif")
		if err != nil {
			return "", nil, fmt.Errorf("creating eif file: %w", err)
		}
		rm := func() { f.Close(); os.Remove(f.Name()) }
		if err := fill(ctx, f); err != nil {
			rm()
			return "", nil, err
		}
		f.Close()
		return f.Name(), func() { os.Remove(f.Name()) }, nil
	}
	key, err := cacheKey(img, opts, blobs)
	if err != nil {
		return "", nil, err
	}
	c, err := eifcache.Open(opts.CacheDir, 0)
	if err != nil {
		return "", nil, err
	}
	ent, err := c.Get(ctx, key, func(ctx context.Context, w io.Writer) error {
		ws, ok := w.(io.WriteSeeker)
		if !ok {
			return errors.New("eif cache gave a file that cannot seek")
		}
		return fill(ctx, ws)
	})
	if err != nil {
		return "", nil, err
	}
	if ent.Hit {
		progress("using cached EIF for " + what)
	}
	return ent.Path, ent.Release, nil
}

func openImage(opts Options) (v1.Image, string, error) {
	var img v1.Image
	var err error
	switch {
	case opts.OCILayout != "":
		img, err = source.FromLayout(opts.OCILayout, source.Options{})
	case opts.Tarball != "":
		img, err = source.FromTarball(opts.Tarball, source.Options{})
	default:
		img, err = source.FromRegistry(opts.Ref, source.Options{})
	}
	if err != nil {
		return nil, "", err
	}
	return img, source.Describe(img), nil
}

// cacheKey names everything that goes into the EIF: the image, the
// overrides, the blob set's files, the init binary and the debug flag.
func cacheKey(img v1.Image, opts Options, blobs *build.BlobSet) (string, error) {
	d, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("reading image digest: %w", err)
	}
	ov, err := json.Marshal(opts.Overrides)
	if err != nil {
		return "", err
	}
	parts := []string{"nitropod-run/1", d.String(), string(ov), strconv.FormatBool(opts.Debug), blobs.Cmdline}
	files := append([]string{blobs.Kernel, opts.Init}, blobs.Modules...)
	for _, f := range files {
		h, err := fileDigest(f)
		if err != nil {
			return "", err
		}
		parts = append(parts, filepath.Base(f), h)
	}
	return eifcache.Key(parts...), nil
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hashing %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hashing %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ParsePublish parses a --publish value: ENCLAVE_PORT, HOST_PORT:ENCLAVE_PORT
// or HOST_IP:HOST_PORT:ENCLAVE_PORT. The host IP defaults to 127.0.0.1.
func ParsePublish(s string) (enclave.PortMapping, error) {
	bad := func(why string) (enclave.PortMapping, error) {
		return enclave.PortMapping{}, fmt.Errorf("--publish %q: %s; use [HOST_IP:]HOST_PORT:ENCLAVE_PORT, e.g. 8080:80", s, why)
	}
	s = strings.TrimSuffix(s, "/tcp")
	i := strings.LastIndex(s, ":")
	hostPart, encPart := "", s
	if i >= 0 {
		hostPart, encPart = s[:i], s[i+1:]
	}
	ep, err := strconv.ParseUint(encPart, 10, 16)
	if err != nil || ep == 0 {
		return bad("the enclave port must be a number from 1 to 65535")
	}
	host, port := "127.0.0.1", hostPart
	if j := strings.LastIndex(hostPart, ":"); j >= 0 {
		host, port = strings.Trim(hostPart[:j], "[]"), hostPart[j+1:]
		if net.ParseIP(host) == nil {
			return bad(fmt.Sprintf("host address %q is not an IP address", host))
		}
	}
	if port == "" {
		port = encPart
	}
	if hp, err := strconv.ParseUint(port, 10, 16); err != nil || (hp == 0 && port != "0") {
		return bad("the host port must be a number from 0 to 65535")
	}
	return enclave.PortMapping{HostAddr: net.JoinHostPort(host, port), EnclavePort: uint16(ep)}, nil
}
