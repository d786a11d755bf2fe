package build

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

// bootScript is a stand-in init: the image's busybox, reached through
// /rootfs, shows that the kernel unpacked both ramdisks of the EIF.
const bootScript = `#!/rootfs/bin/sh
export PATH=/rootfs/bin
busybox mount -t devtmpfs dev /dev
busybox mount -t proc proc /proc 2>/dev/null || { busybox mkdir -p /proc && busybox mount -t proc proc /proc; }
echo "cmd: $(busybox cat /cmd | busybox tr '\n' ' ')|"
echo "modules: $(busybox ls /nitropod/modules | busybox tr '\n' ' ')"
echo "process: $(busybox cat /nitropod/process.json)"
echo "index: $(busybox cat /rootfs/var/www/index.html)"
echo "httpd: $(busybox readlink /rootfs/bin/httpd)"
echo "tmp: $(busybox stat -c %a /rootfs/tmp)"
echo NITROPOD-BOOT-OK
busybox poweroff -f
`

// TestBootEmulated boots an EIF built from the busybox image on the
// emulation kernel under QEMU (kernel, cmdline and the concatenated ramdisks,
// as the qemu backend does) with a script as init.
func TestBootEmulated(t *testing.T) {
	testenv.Integration(t)
	blobs := testenv.EmuBlobs(t)
	qemu := testenv.Binary(t, "qemu-system-x86_64")
	dir := t.TempDir()
	initPath := filepath.Join(dir, "init")
	if err := os.WriteFile(initPath, []byte(bootScript), 0o755); err != nil {
		t.Fatal(err)
	}
	img := testimage.Busybox(t, testimage.Entrypoint("httpd", "-f", "-p", "80"))
	p := filepath.Join(dir, "bb.eif")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FromImage(f, img, Overrides{}, Options{Blobs: blobs, Init: initPath, BuildTime: time.Unix(0, 0)}); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Split the EIF into what QEMU 7.2 boots: -kernel, -append, -initrd.
	b, _ := os.ReadFile(p)
	ef, err := eif.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var kernel, cmdline, initrd []byte
	for _, s := range ef.Sections {
		data := b[s.DataOffset() : s.DataOffset()+s.Size]
		switch s.Type {
		case eif.SectionKernel:
			kernel = data
		case eif.SectionCmdline:
			cmdline = data
		case eif.SectionRamdisk:
			initrd = append(initrd, data...)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "kernel"), kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "initrd"), initrd, 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-accel", "tcg", "-M", "microvm", "-m", "256", "-nographic", "-nodefaults",
		"-no-reboot", "-serial", "stdio", "-kernel", filepath.Join(dir, "kernel"), "-initrd", filepath.Join(dir, "initrd"),
		"-append", string(cmdline))
	out, err := cmd.CombinedOutput()
	s := string(out)
	if !strings.Contains(s, "NITROPOD-BOOT-OK") {
		t.Fatalf("the EIF did not boot to init (%v):\n%s", err, s)
	}
	for _, want := range []string{
		"cmd: httpd -f -p 80 |",
		"modules: 00-virtio_ring.ko 01-", // load order from the blob set's modules.order
		`"args":["httpd","-f","-p","80"]`,
		"index: hello from nitropod",
		"httpd: busybox",
		"tmp: 1777",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("boot output lacks %q:\n%s", want, s)
		}
	}
}
