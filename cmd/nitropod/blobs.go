package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/internal/emublobs"
)

func init() { topCommands = append(topCommands, newBlobsCommand()) }

// InitEnv names a nitropod-init binary, overriding the search.
const InitEnv = "NITROPOD_INIT"

// installHint says how to get nitropod and nitropod-init without the
// repository (nitropod-init must be static, so cgo is off).
const installHint = "CGO_ENABLED=0 go install github.com/nitropod/nitropod/cmd/nitropod@latest github.com/nitropod/nitropod/cmd/nitropod-init@latest (both into the same directory)"

// defaultInit is the nitropod-init binary used when --init is not given:
// $NITROPOD_INIT; else nitropod-init next to this executable (make build and
// go install put them side by side); else nitropod-init on PATH; else "".
func defaultInit() string {
	if p := os.Getenv(InitEnv); p != "" {
		return p
	}
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		p := filepath.Join(filepath.Dir(exe), "nitropod-init")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	if p, err := exec.LookPath("nitropod-init"); err == nil {
		return p
	}
	return ""
}

// checkInit explains a missing nitropod-init.
func checkInit(path string) error {
	if path == "" {
		return fmt.Errorf("no nitropod-init (needed to build EIFs) next to nitropod, on PATH or in $%s: install it with %s, or pass --init", InitEnv, installHint)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("nitropod-init %s: %w (install it with %s, or pass --init)", path, err, installHint)
	}
	return nil
}

// progressf returns a progress printer for stderr when it is a terminal,
// and one that prints nothing otherwise (pipes and files stay
// machine-readable).
func progressf() func(format string, args ...any) {
	if !isTerminal(os.Stderr) {
		return func(string, ...any) {}
	}
	start := time.Now()
	return func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "nitropod: [%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
}

func newBlobsCommand() *cobra.Command {
	blobs := &cobra.Command{
		Use:   "blobs",
		Short: "The emulation blob set (kernel, cmdline, virtio modules) of emulated enclaves",
		Long: `nitropod run and nitropod build put an emulation blob set into each EIF: Debian's
kernel (bzImage), its command line (cmdline) and the virtio modules nitropod-init loads.
It is looked for in --blobs, then $` + emublobs.EnvDir + `, then ` + "$XDG_DATA_HOME/nitropod/blobs/emu" + `
(default ~/.local/share/nitropod/blobs/emu), then ` + emublobs.SystemDir + `.`,
	}
	var (
		dir, cache string
		system     bool
		strict     bool
	)
	prepare := &cobra.Command{
		Use:   "prepare [--dir DIR | --system]",
		Short: "Make the blob set from Debian's pinned kernel package (apt-get download, sha256, dpkg-deb)",
		Long: `Downloads Debian's kernel package ` + emublobs.Package + ` ` + emublobs.Version + ` once (apt-get download,
into the cache), checks its pinned sha256, and writes the blob set: bzImage, cmdline and the
virtio modules with their load order. A blob set already made from the same package is left
as it is. Prints the blob set's directory.

Needs apt-get and dpkg-deb (Debian or Ubuntu), and xz or zstd when the package compresses
its modules. When Debian has replaced the pinned version, the kernel linux-image-amd64
depends on now is used, with a warning (--strict fails instead).`,
		Example: `  nitropod blobs prepare                 # ~/.local/share/nitropod/blobs/emu
  sudo nitropod blobs prepare --system   # ` + emublobs.SystemDir,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if system {
				if dir != "" {
					return errors.New("give --dir or --system, not both")
				}
				dir = emublobs.SystemDir
			}
			progress := progressf()
			res, err := emublobs.Prepare(cmd.Context(), emublobs.Options{
				Dir: dir, CacheDir: cache, Strict: strict,
				Log:  func(s string) { progress("%s", s) },
				Warn: func(s string) { fmt.Fprintln(os.Stderr, "nitropod:", s) },
			})
			if err != nil {
				return fmt.Errorf("preparing the blob set: %w", err)
			}
			if res.UpToDate {
				progress("%s is up to date (%s)", res.Dir, res.Package)
			} else {
				progress("wrote %s from %s", res.Dir, res.Package)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), res.Dir)
			return err
		},
	}
	prepare.Flags().StringVar(&dir, "dir", "", "write the blob set here (default $XDG_DATA_HOME/nitropod/blobs/emu, or ~/.local/share/nitropod/blobs/emu)")
	prepare.Flags().BoolVar(&system, "system", false, "write the system-wide blob set "+emublobs.SystemDir)
	prepare.Flags().StringVar(&cache, "cache-dir", "", "keep the downloaded package here (default $NITROPOD_CACHE, or $XDG_CACHE_HOME/nitropod)")
	prepare.Flags().BoolVar(&strict, "strict", false, "fail when the pinned package cannot be downloaded instead of using Debian's current kernel")

	path := &cobra.Command{
		Use:   "path",
		Short: "Print the blob set nitropod run uses; exit 1 if it is not prepared",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			d := emublobs.Default()
			if _, err := fmt.Fprintln(cmd.OutOrStdout(), d); err != nil {
				return err
			}
			return emublobs.Check(d)
		},
	}
	blobs.AddCommand(prepare, path)
	return blobs
}
