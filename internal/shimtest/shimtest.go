// Package shimtest installs the nitro runtime in a private containerd for
// integration tests: it builds the shim, the launcher, nitropod-fetch and
// nitropod-init, puts them on containerd's PATH (ctrtest), and writes a
// shim.toml for the QEMU backend with the emulation blob set, a private EIF
// cache and a short run directory under /run. Start checks the
// prerequisites (root, QEMU, blobs) the testenv way, and a cleanup asserts
// that no launcher, QEMU or rootfs mount of the test is left behind.
package shimtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/ctrtest"
	"github.com/nitropod/nitropod/internal/testenv"
)

// Packages are the commands Build builds: everything a node runs for the
// nitro runtime.
var Packages = []string{
	"./cmd/containerd-shim-nitro-v1",
	"./cmd/nitropod-launcher",
	"./cmd/nitropod-fetch",
	"./cmd/nitropod-init",
}

// DefaultMemoryMiB is the shim's default_memory_mib unless Options say
// otherwise.
const DefaultMemoryMiB = 256

// Options configure Start.
type Options struct {
	// Shared uses the binaries built once per test binary (Shared);
	// otherwise Packages and ExtraPackages are built into a directory of
	// the test.
	Shared bool
	// ExtraPackages are built next to Packages unless Shared.
	ExtraPackages []string
	// Containerd configures the private containerd; the binaries' directory
	// is added to its PATH, NITROPOD_SHIM_CONFIG to its environment and,
	// with CRI, the shim config becomes the runtimes' ConfigPath.
	Containerd ctrtest.Options
	// MemoryMiB is the shim's default_memory_mib (0: DefaultMemoryMiB).
	MemoryMiB int
	// Config is appended to the shim config (tables such as [s3]).
	Config string
}

// Env is a private containerd with the nitro runtime installed.
type Env struct {
	Ctrd *ctrtest.Containerd
	// Bin holds the shim, launcher, nitropod-fetch and nitropod-init.
	Bin string
	// Blobs is the emulation blob set; InitPath nitropod-init.
	Blobs    string
	InitPath string
	// CacheDir is the shim's EIF cache, RunDir its run_dir and ConfigPath
	// its shim.toml.
	CacheDir   string
	RunDir     string
	ConfigPath string

	memoryMiB int
}

// Start checks the prerequisites, builds (or reuses) the binaries, writes
// the shim config and starts containerd. Everything stops in t.Cleanup.
func Start(t testing.TB, opts Options) *Env {
	t.Helper()
	testenv.Integration(t)
	testenv.RequireRoot(t)
	testenv.Binary(t, "qemu-system-x86_64")
	e := &Env{Blobs: testenv.EmuBlobs(t), memoryMiB: opts.MemoryMiB}
	if e.memoryMiB == 0 {
		e.memoryMiB = DefaultMemoryMiB
	}
	if opts.Shared {
		e.Bin = Shared(t)
	} else {
		e.Bin = t.TempDir()
		if err := Build(e.Bin, append(append([]string{}, Packages...), opts.ExtraPackages...)...); err != nil {
			t.Fatal(err)
		}
	}
	e.InitPath = filepath.Join(e.Bin, "nitropod-init")
	dir := t.TempDir()
	e.CacheDir, e.ConfigPath = filepath.Join(dir, "cache"), filepath.Join(dir, "shim.toml")
	// QEMU's channel sockets live here: keep the path short.
	runDir, err := os.MkdirTemp("/run", "npshim")
	if err != nil {
		t.Fatal(err)
	}
	e.RunDir = runDir
	t.Cleanup(func() { os.RemoveAll(runDir) })
	e.Configure(t, opts.Config)

	co := opts.Containerd
	if co.CRI != nil {
		co.CRI.RuntimeConfigPath = e.ConfigPath
	}
	co.PathDirs = append(append([]string{}, co.PathDirs...), e.Bin)
	co.Env = append(append([]string{}, co.Env...), "NITROPOD_SHIM_CONFIG="+e.ConfigPath)
	e.Ctrd = ctrtest.Start(t, co)
	t.Cleanup(func() { e.AssertNothingLeft(t) })
	return e
}

// Configure rewrites the shim config: the QEMU backend with one CPU, the
// memory of Options.MemoryMiB, sizes from the config (there is no kubelet
// to ask for allocations), the test's blobs, init, cache and run
// directory, then extra. The shim reads it at every Create.
func (e *Env) Configure(t testing.TB, extra string) {
	t.Helper()
	cfg := fmt.Sprintf(`backend = "qemu"
blobs_dir = %q
init_path = %q
cache_dir = %q
run_dir = %q
default_cpus = 1
default_memory_mib = %d
[qemu]
accel = "tcg"
[allocation]
source = "config"
`, e.Blobs, e.InitPath, e.CacheDir, e.RunDir, e.memoryMiB)
	if extra != "" {
		cfg += strings.TrimRight(extra, "\n") + "\n"
	}
	if err := os.WriteFile(e.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ConfigureMemory rewrites the shim config as Configure does, with
// default_memory_mib set to mib from now on.
func (e *Env) ConfigureMemory(t testing.TB, mib int, extra string) {
	t.Helper()
	e.memoryMiB = mib
	e.Configure(t, extra)
}

// MemoryMiB is the shim's current default_memory_mib.
func (e *Env) MemoryMiB() int { return e.memoryMiB }

// Build builds the Go packages (static, -trimpath) into dir.
func Build(dir string, pkgs ...string) error {
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = testenv.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

var shared struct {
	sync.Once
	dir string
	err error
}

// Shared builds Packages once per test binary and returns their directory
// (Options.Shared); a TestMain calls RemoveShared after m.Run.
func Shared(t testing.TB) string {
	t.Helper()
	shared.Do(func() {
		dir, err := os.MkdirTemp("", "nitroshim-bin")
		if err != nil {
			shared.err = err
			return
		}
		shared.dir = dir
		shared.err = Build(dir, Packages...)
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.dir
}

// RemoveShared removes what Shared built.
func RemoveShared() {
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}

// AssertNothingLeft waits up to 15s until Leftovers is empty and fails the
// test otherwise.
func (e *Env) AssertNothingLeft(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var left []string
	for time.Now().Before(deadline) {
		left = e.Leftovers()
		if len(left) == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("left behind:\n%s", strings.Join(left, "\n"))
}

// Leftovers are the launcher and QEMU processes and rootfs mounts of this
// containerd and run directory.
func (e *Env) Leftovers() []string {
	var left []string
	for _, cl := range cmdlines() {
		if strings.Contains(cl, e.Ctrd.Dir) && (strings.Contains(cl, "nitropod-launcher") || strings.Contains(cl, "qemu-system")) {
			left = append(left, "process: "+cl)
		}
		if strings.Contains(cl, "qemu-system") && strings.Contains(cl, e.RunDir) {
			left = append(left, "process: "+cl)
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, e.Ctrd.State) && strings.Contains(l, "/rootfs") {
			left = append(left, "mount: "+l)
		}
	}
	return left
}

// ShimProcesses counts the running shim daemons of this containerd (not
// the short-lived `start`/`delete` invocations).
func (e *Env) ShimProcesses() int {
	n := 0
	for _, cl := range cmdlines() {
		args := strings.Fields(cl)
		if len(args) == 0 || !strings.HasSuffix(args[0], nitropod.ShimBinary) || !strings.Contains(cl, e.Ctrd.Socket) {
			continue
		}
		action := false
		for _, a := range args[1:] {
			action = action || a == "start" || a == "delete"
		}
		if !action {
			n++
		}
	}
	return n
}

// cmdlines are the command lines of all processes, arguments joined by
// spaces.
func cmdlines() []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			continue
		}
		out = append(out, strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " "))
	}
	return out
}
