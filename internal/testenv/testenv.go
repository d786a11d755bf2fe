// Package testenv finds the real components that integration tests run
// against (QEMU, containerd, kube-apiserver, the emulation kernel, …) and
// decides what happens when one is missing: on a developer machine the test
// skips and says what to install; with NITROPOD_REQUIRE_INTEGRATION=1 (set by
// .ci/run) the test fails, so CI never passes by skipping (docs/TESTENV.md).
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// RequireEnv is the variable that turns a missing prerequisite into a failure.
const RequireEnv = "NITROPOD_REQUIRE_INTEGRATION"

// Required reports whether missing prerequisites must fail tests.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Missing skips the test, or fails it when prerequisites are required, with a
// message that says what is missing and how to get it.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("integration prerequisite missing (%s=1): %s", RequireEnv, msg)
	}
	t.Skipf("integration prerequisite missing: %s (run `make tools emu-kernel` or set %s=1 to make this a failure)", msg, RequireEnv)
}

// Integration marks a test as an integration test: it is skipped with -short
// (the unit tier), and runs otherwise.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped in -short mode (unit tier)")
	}
}

// RequireRoot is Missing unless the test runs as root on Linux.
func RequireRoot(t testing.TB) {
	t.Helper()
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		Missing(t, "this test needs root on Linux")
	}
}

var (
	rootOnce sync.Once
	rootDir  string
)

// RepoRoot is the directory of the module's go.mod (the repository root).
func RepoRoot() string {
	rootOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		rootDir = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	})
	return rootDir
}

// OutputDir is where `make` puts built binaries, tools and blobs: _output in
// the repository, or $NITROPOD_OUTPUT.
func OutputDir() string {
	if d := os.Getenv("NITROPOD_OUTPUT"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(), "_output")
}

// Binary returns the path of an executable: first _output/tools/bin and
// _output/bin (built by `make tools` and `make build`), then PATH.
func Binary(t testing.TB, name string) string {
	t.Helper()
	for _, dir := range []string{filepath.Join(OutputDir(), "tools", "bin"), filepath.Join(OutputDir(), "bin")} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	Missing(t, "executable %q not found in %s/{tools/bin,bin} or PATH", name, OutputDir())
	return ""
}

// EmuBlobs returns the emulation blob set made by `make emu-kernel`
// (bzImage, cmdline, modules), or $NITROPOD_BLOBS.
func EmuBlobs(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("NITROPOD_BLOBS")
	if dir == "" {
		dir = filepath.Join(OutputDir(), "blobs", "emu")
	}
	if _, err := os.Stat(filepath.Join(dir, "bzImage")); err != nil {
		Missing(t, "emulation blob set not found at %s (make emu-kernel)", dir)
	}
	return dir
}
