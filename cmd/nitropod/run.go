package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/enclave/local"
	"github.com/nitropod/nitropod/enclave/qemu"
	"github.com/nitropod/nitropod/internal/emublobs"
)

func init() { topCommands = append(topCommands, newRunCommand()) }

func runCacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "nitropod")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "nitropod")
	}
	return ""
}

// isTerminal is golang.org/x/term's IsTerminal on Linux (x/term is not a
// dependency of the module; x/sys is).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// terminalProgress prints run's progress lines on stderr with the time
// since the start, and while an EIF is being built (a large image can take
// minutes) a line every few seconds saying it still is. An empty line stops
// the ticker.
func terminalProgress() func(string) {
	start := time.Now()
	print := func(s string) {
		fmt.Fprintf(os.Stderr, "nitropod: [%5.1fs] %s\n", time.Since(start).Seconds(), s)
	}
	var (
		mu   sync.Mutex
		stop chan struct{}
	)
	return func(s string) {
		mu.Lock()
		defer mu.Unlock()
		if stop != nil {
			close(stop)
			stop = nil
		}
		if s == "" {
			return
		}
		print(s)
		if !strings.HasPrefix(s, "building EIF") {
			return
		}
		stop = make(chan struct{})
		go func(stop chan struct{}, began time.Time) {
			t := time.NewTicker(progressTick)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					// Under mu: once stop is closed (under mu too), no
					// tick is printed after the next progress line.
					mu.Lock()
					select {
					case <-stop:
						mu.Unlock()
						return
					default:
					}
					print(fmt.Sprintf("still building the EIF (%.0fs)", time.Since(began).Seconds()))
					mu.Unlock()
				}
			}
		}(stop, time.Now())
	}
}

// progressTick is how often a long EIF build is reported.
var progressTick = 5 * time.Second

func newRunCommand() *cobra.Command {
	var (
		o                         local.Options
		podFile, entrypoint       string
		publish, env              []string
		noCache                   bool
		grace                     time.Duration
		cpus, memory              int
		debug                     bool
		workdir, user, accel, bin string
	)
	cmd := &cobra.Command{
		Use:   "run (IMAGE | --oci-layout DIR | --tarball F | --eif F | -f POD.yaml) [flags] [-- CMD…]",
		Short: "Run a container image in an emulated enclave (QEMU)",
		Long: `Builds the image's EIF (or reuses it from the local cache), boots it in an emulated
enclave under QEMU, streams the app's stdout and stderr, publishes ports on the host,
and exits with the app's exit code. Ctrl-C (or SIGTERM) sends SIGTERM to the app; a
second one, or the grace period passing, terminates the enclave.

With -f, the first container of a Kubernetes Pod manifest gives the image, command,
args, env, working directory, limits.cpu/memory (the enclave size) and containerPorts
(published on 127.0.0.1 at the same port); ANJ_ENCLAVE_DEBUG_MODE=yes selects debug
mode. Flags given explicitly override the manifest.`,
		Example: `  nitropod run --oci-layout ./busybox -- sh -c 'echo hello'
  nitropod run --oci-layout ./nginx --publish 8080:80 --memory 512
  nitropod run -f nginx-pod.yaml --oci-layout ./nginx --publish 8080:80`,
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			var extra []string
			if dash >= 0 {
				args, extra = args[:dash], args[dash:]
			}
			if len(args) > 1 {
				return fmt.Errorf("unexpected arguments %q: put the command after --", args[1:])
			}
			if len(args) == 1 {
				o.Ref = args[0]
			}
			if podFile != "" {
				b, err := os.ReadFile(podFile)
				if err != nil {
					return err
				}
				pod, err := local.ParsePod(b)
				if err != nil {
					return err
				}
				if o.Ref == "" && o.OCILayout == "" && o.Tarball == "" && o.EIF == "" {
					o.Ref = pod.Image
				}
				o.Overrides.Entrypoint, o.Overrides.Cmd = pod.Entrypoint, pod.Cmd
				o.Overrides.Env = pod.Env
				o.Overrides.Cwd = pod.Cwd
				o.CPUs, o.MemoryMiB, o.Debug = pod.CPUs, pod.MemoryMiB, pod.Debug
				if !cmd.Flags().Changed("publish") {
					o.Publish = pod.Ports
				}
			}
			if cmd.Flags().Changed("cpus") || o.CPUs == 0 {
				o.CPUs = cpus
			}
			if cmd.Flags().Changed("memory") {
				o.MemoryMiB = memory
			}
			if cmd.Flags().Changed("debug") {
				o.Debug = debug
			}
			for _, p := range publish {
				m, err := local.ParsePublish(p)
				if err != nil {
					return err
				}
				o.Publish = append(o.Publish, m)
			}
			o.Overrides.Env = append(o.Overrides.Env, env...)
			if cmd.Flags().Changed("entrypoint") {
				o.Overrides.Entrypoint = []string{entrypoint}
			}
			if len(extra) > 0 {
				o.Overrides.Cmd = extra
			}
			if workdir != "" {
				o.Overrides.Cwd = workdir
			}
			if user != "" {
				o.Overrides.User = user
			}
			if !noCache {
				o.CacheDir = runCacheDir()
			}
			o.QEMU = qemu.Config{Binary: bin, Accel: accel}
			o.GracePeriod = grace
			o.Stdout, o.Stderr = os.Stdout, os.Stderr
			if !isTerminal(os.Stdin) {
				o.Stdin = os.Stdin
			}
			if isTerminal(os.Stderr) {
				o.Progress = terminalProgress()
				defer o.Progress("")
			}
			sigs := make(chan os.Signal, 4)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
			defer signal.Stop(sigs)
			o.Signals = sigs

			if o.Blobs == "" {
				o.Blobs = emublobs.Default()
			}
			if o.Init == "" {
				o.Init = defaultInit()
			}
			if o.EIF == "" {
				// Building an EIF needs the blob set and nitropod-init.
				if err := emublobs.Check(o.Blobs); err != nil {
					return err
				}
				if err := checkInit(o.Init); err != nil {
					return err
				}
				if err := build.CheckInit(o.Init); err != nil {
					return fmt.Errorf("--init: %w", err)
				}
			}
			st, err := local.Run(context.Background(), o)
			if err != nil {
				return err
			}
			if st.Code != 0 {
				return &exitError{code: st.Code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&podFile, "file", "f", "", "run the first container of this Pod manifest")
	f.StringVar(&o.OCILayout, "oci-layout", "", "image from an OCI layout directory")
	f.StringVar(&o.Tarball, "tarball", "", "image from a docker-save or OCI archive tarball")
	f.StringVar(&o.EIF, "eif", "", "boot this prebuilt EIF")
	f.StringArrayVarP(&publish, "publish", "p", nil, "publish an enclave TCP port: [HOST_IP:]HOST_PORT:ENCLAVE_PORT (host IP 127.0.0.1 by default)")
	f.IntVar(&cpus, "cpus", local.DefaultCPUs, "vCPUs of the enclave")
	f.IntVar(&memory, "memory", 0, "enclave memory in MiB (default: max(256, 4× the EIF size))")
	f.BoolVar(&debug, "debug", false, "debug enclave: show the kernel console")
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable K=V in the app (measured into the EIF)")
	f.StringVar(&entrypoint, "entrypoint", "", "replace the image's entrypoint")
	f.StringVarP(&workdir, "workdir", "w", "", "replace the image's working directory")
	f.StringVarP(&user, "user", "u", "", "replace the image's user (name, uid, uid:gid)")
	f.StringVar(&o.Blobs, "blobs", "", "emulation blob set directory: bzImage, cmdline, modules (default: $NITROPOD_BLOBS, else $XDG_DATA_HOME/nitropod/blobs/emu, else "+emublobs.SystemDir+"; nitropod blobs prepare makes it)")
	f.StringVar(&o.Init, "init", "", "nitropod-init binary (default: $NITROPOD_INIT, else next to nitropod, else on PATH)")
	f.StringVar(&bin, "qemu", qemu.DefaultBinary, "QEMU executable")
	f.StringVar(&accel, "accel", "tcg", "QEMU accelerator: tcg or kvm")
	f.BoolVar(&noCache, "no-cache", false, "build the EIF afresh, without the local cache")
	f.DurationVar(&grace, "grace-period", 10*time.Second, "time the app gets after SIGTERM before the enclave is terminated")
	return cmd
}
