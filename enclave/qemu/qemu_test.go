package qemu_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/qemu"
	"github.com/nitropod/nitropod/internal/testenv"
)

func TestHello(t *testing.T) {
	testenv.Integration(t)
	bin := testenv.Binary(t, "qemu-system-x86_64")
	initBin := buildInit(t)
	path := busyboxEIF(t, initBin, ramdisk.Process{Args: []string{"sh", "-c", "echo hello; echo err >&2; exit 7"}}, nil)
	b, err := qemu.New(qemu.Config{Binary: bin, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var out, errb, con bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	start := time.Now()
	st, err := enclave.Run(ctx, b, enclave.Request{Name: "t", EIFPath: path, CPUs: 1, MemoryMiB: 256, Debug: true, Console: &con},
		enclave.RunIO{Stdout: &out, Stderr: &errb, Progress: func(s string) { t.Logf("%v %s", time.Since(start), s) }})
	t.Logf("console:\n%s", con.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("status %+v stdout %q stderr %q in %v", st, out.String(), errb.String(), time.Since(start))
}
