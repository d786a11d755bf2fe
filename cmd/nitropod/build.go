package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/cache"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/eif/source"
)

func init() { topCommands = append(topCommands, newBuildCommand()) }

// version is the nitropod version recorded in EIF metadata.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// defaultBlobs is the blob set used when --blobs is not given: $NITROPOD_BLOBS,
// else AWS's on a Nitro host.
func defaultBlobs() string {
	if d := os.Getenv("NITROPOD_BLOBS"); d != "" {
		return d
	}
	return "/usr/share/nitro_enclaves/blobs"
}

func newBuildCommand() *cobra.Command {
	var (
		ociLayout, tarballPath, rootfs, processFile string
		blobs, initPath, output, cmdline, platform  string
		debugCmdline                                bool
		entrypoint, workdir, user                   string
		env                                         []string
		sf                                          signFlags
		mf                                          metaFlags
	)
	cmd := &cobra.Command{
		Use:   "build (IMAGE-REF | --oci-layout DIR | --tarball F | --rootfs DIR) --init F --output F [ARG…]",
		Short: "Build a bootable EIF from a container image in one streaming pass",
		Long: `Builds an EIF from a container image: the blob set's kernel and cmdline, a bootstrap
ramdisk with the init binary and the blob set's modules, and a customer ramdisk with the
image's flattened filesystem and its process. Prints the measurements.

The image comes from a registry (IMAGE-REF), an OCI layout directory, an OCI or
docker-save tarball, or an unpacked rootfs directory with --process (an OCI runtime
spec, config.json) or with ARGs. ARGs after the image replace the image's Cmd.

The same inputs give a byte-identical EIF; SOURCE_DATE_EPOCH fixes the metadata build time.`,
		Example: `  nitropod build --oci-layout ./nginx --blobs _output/blobs/emu --init _output/bin/nitropod-init --output nginx.eif
  nitropod build localhost:5000/app:v1 --init nitropod-init --output app.eif -- --port 8080`,
		RunE: func(cmd *cobra.Command, args []string) error {
			sources := 0
			for _, s := range []string{ociLayout, tarballPath, rootfs} {
				if s != "" {
					sources++
				}
			}
			var ref string
			if sources == 0 {
				if len(args) == 0 {
					return errors.New("give an image: IMAGE-REF, --oci-layout DIR, --tarball F or --rootfs DIR")
				}
				ref, args = args[0], args[1:]
				sources++
			}
			if sources > 1 {
				return errors.New("give only one of IMAGE-REF, --oci-layout, --tarball and --rootfs")
			}
			if initPath == "" || output == "" {
				return errors.New("--init and --output are required")
			}
			if err := build.CheckInit(initPath); err != nil {
				return fmt.Errorf("--init: %w", err)
			}
			signer, err := sf.signer()
			if err != nil {
				return err
			}
			custom, err := mf.custom()
			if err != nil {
				return err
			}
			bt, err := build.TimeFromEnv()
			if err != nil {
				return err
			}
			opts := build.Options{
				Blobs: blobs, Init: initPath, Cmdline: cmdline, DebugCmdline: debugCmdline,
				Name: mf.name, Version: mf.version, CustomMetadata: custom, ToolVersion: version(),
				Signer: signer, BuildTime: bt,
			}
			if rootfs != "" {
				proc, err := rootfsProcess(rootfs, processFile, args, env, workdir, user)
				if err != nil {
					return err
				}
				return runBuild(cmd, output, func(f *os.File) (eif.Measurements, error) {
					return build.FromRootfs(f, rootfs, proc, opts)
				})
			}
			sopts := source.Options{}
			if platform != "" {
				p, err := v1.ParsePlatform(platform)
				if err != nil {
					return fmt.Errorf("--platform %q: %w", platform, err)
				}
				sopts.Platform = p
			}
			var img v1.Image
			switch {
			case ociLayout != "":
				img, err = source.FromLayout(ociLayout, sopts)
			case tarballPath != "":
				img, err = source.FromTarball(tarballPath, sopts)
			default:
				img, err = source.FromRegistry(ref, sopts, remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithContext(cmd.Context()))
				if err == nil {
					// The builder reads each layer twice (index, then data):
					// keep the downloaded layers on disk for the second pass.
					dir, derr := os.MkdirTemp("", "nitropod-layers-")
					if derr != nil {
						return derr
					}
					defer os.RemoveAll(dir)
					img = cache.Image(img, cache.NewFilesystemCache(dir))
				}
			}
			if err != nil {
				return err
			}
			ov := build.Overrides{Env: env, Cwd: workdir, User: user}
			if len(args) > 0 {
				ov.Cmd = args
			}
			if entrypoint != "" {
				ep, err := parseEntrypoint(entrypoint)
				if err != nil {
					return err
				}
				ov.Entrypoint = ep
			}
			return runBuild(cmd, output, func(f *os.File) (eif.Measurements, error) {
				return build.FromImage(f, img, ov, opts)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&ociLayout, "oci-layout", "", "OCI image layout directory")
	f.StringVar(&tarballPath, "tarball", "", "OCI archive or docker save tarball")
	f.StringVar(&rootfs, "rootfs", "", "unpacked root filesystem directory (with --process or ARGs)")
	f.StringVar(&processFile, "process", "", "OCI runtime spec (config.json) whose process runs in --rootfs")
	f.StringVar(&platform, "platform", "", "platform to pick from a multi-platform image (default linux/amd64)")
	f.StringVar(&blobs, "blobs", defaultBlobs(), "blob set directory: bzImage, cmdline, *.ko, modules.order [$NITROPOD_BLOBS]")
	f.StringVar(&initPath, "init", "", "init binary for the bootstrap ramdisk (nitropod-init)")
	f.StringVar(&output, "output", "", "EIF file to write")
	f.StringVar(&cmdline, "cmdline", "", "kernel command line (default: the blob set's)")
	f.BoolVar(&debugCmdline, "debug-cmdline", false, "kernel messages on the console (drops quiet), for debug enclaves")
	f.StringVar(&entrypoint, "entrypoint", "", `replace the image's entrypoint: a program, or a JSON array ["prog","arg"]`)
	f.StringArrayVar(&env, "env", nil, "set an environment variable K=V (repeat)")
	f.StringVar(&workdir, "workdir", "", "replace the working directory")
	f.StringVar(&user, "user", "", "replace the user (name, uid, name:group, uid:gid)")
	sf.add(cmd)
	mf.add(cmd)
	return cmd
}

func parseEntrypoint(s string) ([]string, error) {
	if strings.HasPrefix(strings.TrimSpace(s), "[") {
		var ep []string
		if err := json.Unmarshal([]byte(s), &ep); err != nil {
			return nil, fmt.Errorf("--entrypoint %q: not a JSON array of strings: %w", s, err)
		}
		return ep, nil
	}
	return []string{s}, nil
}

// rootfsProcess is the process for --rootfs: from an OCI runtime spec, or
// from ARGs and the flags (with a numeric --user).
func rootfsProcess(rootfs, processFile string, args, env []string, workdir, user string) (proc ramdisk.Process, err error) {
	if processFile != "" {
		b, err := os.ReadFile(processFile)
		if err != nil {
			return proc, fmt.Errorf("reading --process: %w", err)
		}
		var spec specs.Spec
		if err := json.Unmarshal(b, &spec); err != nil {
			return proc, fmt.Errorf("--process %s is not an OCI runtime spec: %w", processFile, err)
		}
		if proc, err = build.ProcessFromSpec(&spec); err != nil {
			return proc, fmt.Errorf("--process %s: %w", processFile, err)
		}
	} else if len(args) == 0 {
		return proc, errors.New("--rootfs needs --process or the command as ARGs")
	}
	cfg := &v1.ConfigFile{Config: v1.Config{Cmd: proc.Args, Env: proc.Env, WorkingDir: proc.Cwd}}
	if proc.UID != 0 || proc.GID != 0 {
		cfg.Config.User = fmt.Sprintf("%d:%d", proc.UID, proc.GID)
	}
	ov := build.Overrides{Env: env, Cwd: workdir, User: user}
	if len(args) > 0 {
		ov.Cmd = args
	}
	p, err := build.ProcessFromConfig(cfg, ov, readRegular(filepath.Join(rootfs, "etc", "passwd")), readRegular(filepath.Join(rootfs, "etc", "group")))
	if err != nil {
		return p, fmt.Errorf("--rootfs process: %w", err)
	}
	p.AdditionalGIDs, p.Hostname = proc.AdditionalGIDs, proc.Hostname
	return p, nil
}

// readRegular reads a small regular file (not through a symlink), or nil.
func readRegular(p string) []byte {
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
		return nil
	}
	b, _ := os.ReadFile(p)
	return b
}

func runBuild(cmd *cobra.Command, output string, b func(f *os.File) (eif.Measurements, error)) error {
	var m eif.Measurements
	err := writeAtomic(output, func(f *os.File) error {
		var err error
		m, err = b(f)
		return err
	})
	if err != nil {
		return err
	}
	return printJSON(cmd.OutOrStdout(), measurementsOutput{m})
}
