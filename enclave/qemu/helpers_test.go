package qemu_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/qemu"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

var (
	initOnce sync.Once
	initDir  string
	initPath string
	initErr  error
)

// ownerEnv makes the test binary act as an enclave's owner process (see
// TestOwnerDies): it boots the EIF named by the variable and waits.
const ownerEnv = "NITROPOD_TEST_QEMU_OWNER"

func TestMain(m *testing.M) {
	if eifPath := os.Getenv(ownerEnv); eifPath != "" {
		os.Exit(actAsOwner(eifPath))
	}
	code := m.Run()
	if initDir != "" {
		os.RemoveAll(initDir)
	}
	os.Exit(code)
}

// initBinary builds nitropod-init (static) once per test binary.
func initBinary(t testing.TB) string {
	t.Helper()
	initOnce.Do(func() {
		initDir, initErr = os.MkdirTemp("", "nitropod-init-")
		if initErr != nil {
			return
		}
		initPath = filepath.Join(initDir, "nitropod-init")
		cmd := exec.Command("go", "build", "-trimpath", "-o", initPath, "github.com/nitropod/nitropod/cmd/nitropod-init")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			initErr = &buildError{err, b}
		}
	})
	if initErr != nil {
		t.Fatalf("building nitropod-init: %v", initErr)
	}
	return initPath
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + string(e.out) }

// busybox is the test image: busybox with extra applets the tests use.
func busybox(t *testing.T, opts ...testimage.Option) v1.Image {
	t.Helper()
	extra := testimage.Layer(t,
		testimage.Symlink("bin/yes", "busybox"),
		testimage.Symlink("bin/trap", "busybox"),
	)
	return testimage.Image(t, []v1.Layer{testimage.Layer(t, testimage.BusyboxFiles(t)...), extra}, append([]testimage.Option{testimage.Cmd("sh")}, opts...)...)
}

// buildEIF builds img's EIF with the emulation blob set and a fresh init.
func buildEIF(t *testing.T, img v1.Image, debug bool) string {
	t.Helper()
	blobs := testenv.EmuBlobs(t)
	out := filepath.Join(t.TempDir(), "app.eif")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := build.FromImage(f, img, build.Overrides{}, build.Options{Blobs: blobs, Init: initBinary(t), DebugCmdline: debug}); err != nil {
		t.Fatalf("building eif: %v", err)
	}
	return out
}

// qemuProcesses lists the PIDs of QEMU processes whose command line
// mentions dir (each test's private work directory).
func qemuProcesses(dir string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(b, []byte("qemu-system")) && bytes.Contains(b, []byte(dir)) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// checkClean fails when a QEMU process or a file is left in workDir.
func checkClean(t *testing.T, workDir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p := qemuProcesses(workDir)
		if len(p) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("qemu processes left behind: %s", strings.Join(p, " "))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	ents, _ := os.ReadDir(workDir)
	for _, e := range ents {
		t.Errorf("left in the work directory: %s", e.Name())
	}
}

// actAsOwner boots eifPath with the QEMU backend (binary and work directory
// from the environment), prints "booted" and waits to be killed.
func actAsOwner(eifPath string) int {
	b, err := qemu.New(qemu.Config{Binary: os.Getenv("QEMU_BINARY"), WorkDir: os.Getenv("QEMU_WORKDIR")})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := b.Boot(ctx, enclave.Request{EIFPath: eifPath, CPUs: 1, MemoryMiB: 256}); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("booted")
	time.Sleep(5 * time.Minute)
	return 0
}
