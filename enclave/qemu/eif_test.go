package qemu_test

import (
	"bytes"
	"io"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/cpio"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/internal/testenv"
)

// buildInit builds nitropod-init, static, into a temporary directory.
func buildInit(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "nitropod-init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/nitropod/nitropod/cmd/nitropod-init")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building nitropod-init: %v\n%s", err, b)
	}
	return out
}

type archive struct {
	t *testing.T
	w *cpio.Writer
}

func (a archive) dir(name string) {
	a.t.Helper()
	if err := a.w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeDir | 0o755}); err != nil {
		a.t.Fatal(err)
	}
}

func (a archive) file(name string, mode uint32, data []byte) {
	a.t.Helper()
	if err := a.w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | mode, Size: int64(len(data))}); err != nil {
		a.t.Fatal(err)
	}
	if _, err := a.w.Write(data); err != nil {
		a.t.Fatal(err)
	}
}

func (a archive) symlink(name, target string) {
	a.t.Helper()
	if err := a.w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeSymlink | 0o777, Linkname: target}); err != nil {
		a.t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// busyboxEIF writes an EIF with the emulation blob set, init, and a busybox
// rootfs that runs proc; extra files are added to the rootfs.
func busyboxEIF(t *testing.T, initBin string, proc ramdisk.Process, extra map[string]string) string {
	t.Helper()
	blobs := testenv.EmuBlobs(t)
	bb := testenv.Binary(t, "busybox")

	var boot bytes.Buffer
	a := archive{t, cpio.NewWriter(&boot)}
	a.dir("dev")
	a.file(ramdisk.InitPath, 0o755, readFile(t, initBin))
	a.dir("nitropod")
	a.dir(ramdisk.ModulesDir)
	order := strings.Fields(string(readFile(t, filepath.Join(blobs, "modules.order"))))
	for i, m := range order {
		a.file(filepath.Join(ramdisk.ModulesDir, filepathNN(i)+"-"+m), 0o644, readFile(t, filepath.Join(blobs, m)))
	}
	if err := a.w.Close(); err != nil {
		t.Fatal(err)
	}

	var cust bytes.Buffer
	c := archive{t, cpio.NewWriter(&cust)}
	c.dir("nitropod")
	pj, _ := json.Marshal(proc)
	c.file(ramdisk.ProcessPath, 0o644, pj)
	c.dir(ramdisk.RootfsDir)
	for _, d := range []string{"bin", "dev", "proc", "sys", "run", "tmp", "etc", "var", "www", "home"} {
		c.dir(ramdisk.RootfsDir + "/" + d)
	}
	c.file(ramdisk.RootfsDir+"/bin/busybox", 0o755, readFile(t, bb))
	for _, app := range []string{"sh", "echo", "cat", "id", "pwd", "env", "httpd", "sleep", "head", "dd", "true", "yes", "ls"} {
		c.symlink(ramdisk.RootfsDir+"/bin/"+app, "busybox")
	}
	for name, data := range extra {
		c.file(ramdisk.RootfsDir+"/"+name, 0o644, []byte(data))
	}
	if err := c.w.Close(); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "test.eif")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kernel, err := os.Open(filepath.Join(blobs, "bzImage"))
	if err != nil {
		t.Fatal(err)
	}
	defer kernel.Close()
	_, err = eif.Write(f, eif.Image{
		Kernel:   kernel,
		Cmdline:  strings.ReplaceAll(string(readFile(t, filepath.Join(blobs, "cmdline"))), "quiet", os.Getenv("TEST_CMDLINE_EXTRA")),
		Ramdisks: []io.Reader{&boot, &cust},
	}, eif.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func filepathNN(i int) string { return string(rune('0'+i/10)) + string(rune('0'+i%10)) }
