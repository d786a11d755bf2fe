package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/registry"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/internal/testimage"
)

func fakeBlobSet(t *testing.T) (blobs, initPath string) {
	d := writeFiles(t, map[string]string{"blobs/bzImage": "kernel", "blobs/cmdline": "console=ttyS0 quiet\n", "blobs/virtio.ko": "mod", "init": string(staticELF())})
	return filepath.Join(d, "blobs"), filepath.Join(d, "init")
}

func buildCLI(t *testing.T, args ...string) (eif.Measurements, []byte) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.eif")
	stdout, err := runEIFCLI(t, append([]string{"build", "--output", out}, args...)...)
	if err != nil {
		t.Fatalf("nitropod build %s: %v", strings.Join(args, " "), err)
	}
	var m measurementsOutput
	if err := json.Unmarshal([]byte(stdout), &m); err != nil {
		t.Fatalf("output %q: %v", stdout, err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	f, err := eif.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := f.Verify()
	if err != nil || rep.Measurements != m.Measurements {
		t.Fatalf("verify: %v; %+v vs printed %+v", err, rep.Measurements, m.Measurements)
	}
	return m.Measurements, b
}

func TestBuildCommand(t *testing.T) {
	blobs, initPath := fakeBlobSet(t)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	img := testimage.Busybox(t, testimage.Entrypoint("httpd", "-f"))
	dir := t.TempDir()
	layout := testimage.WriteOCILayout(t, img, dir)
	common := []string{"--blobs", blobs, "--init", initPath}

	m1, b1 := buildCLI(t, append([]string{"--oci-layout", layout}, common...)...)
	_, b2 := buildCLI(t, append([]string{"--oci-layout", layout}, common...)...)
	if !bytes.Equal(b1, b2) {
		t.Error("two builds of one image differ")
	}
	mt, _ := buildCLI(t, append([]string{"--tarball", testimage.WriteDockerTarball(t, img, "example.com/bb:1", dir)}, common...)...)
	if mt != m1 {
		t.Errorf("docker tarball measurements %+v, OCI layout %+v", mt, m1)
	}
	// From a registry on loopback (go-containerregistry's in-process registry).
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/busybox:test"
	if err := crane.Push(img, ref); err != nil {
		t.Fatalf("pushing: %v", err)
	}
	mreg, breg := buildCLI(t, append([]string{ref}, common...)...)
	if mreg != m1 || !bytes.Equal(breg, b1) {
		t.Errorf("registry build: measurements %+v, want %+v; same bytes %v", mreg, m1, bytes.Equal(breg, b1))
	}

	// Extra args replace the image's Cmd: a different measurement.
	ma, _ := buildCLI(t, append(append([]string{"--oci-layout", layout}, common...), "--", "-p", "8080")...)
	if ma.PCR2 == m1.PCR2 || ma.PCR1 != m1.PCR1 {
		t.Errorf("args override: PCR2 unchanged or PCR1 changed")
	}

	// An unpacked rootfs with an OCI runtime spec.
	rootfs := writeFiles(t, map[string]string{"bin/app": "app", "etc/passwd": "root:x:0:0::/:/bin/sh\nsvc:x:9:9::/:/bin/sh\n"})
	spec := specs.Spec{Process: &specs.Process{Args: []string{"/bin/app"}, Env: []string{"PATH=/bin"}, Cwd: "/", User: specs.User{UID: 9, GID: 9}}}
	sb, _ := json.Marshal(spec)
	specPath := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(specPath, sb, 0o644); err != nil {
		t.Fatal(err)
	}
	mr, br := buildCLI(t, append([]string{"--rootfs", rootfs, "--process", specPath, "--debug-cmdline"}, common...)...)
	if mr.PCR1 == m1.PCR1 { // the debug cmdline is measured
		t.Error("--debug-cmdline did not change PCR1")
	}
	if !bytes.Contains(br, []byte(`"args":["/bin/app"]`)) || !bytes.Contains(br, []byte(`"uid":9`)) {
		t.Error("rootfs build lacks the spec's process")
	}
	_, bu := buildCLI(t, append([]string{"--rootfs", rootfs, "--user", "svc"}, append(common, "--", "/bin/app", "-v")...)...)
	if !bytes.Contains(bu, []byte(`"args":["/bin/app","-v"]`)) || !bytes.Contains(bu, []byte(`"uid":9,"gid":9`)) {
		t.Error("rootfs build with ARGs and --user svc lacks its process")
	}
}

func TestBuildCommandErrors(t *testing.T) {
	blobs, initPath := fakeBlobSet(t)
	out := filepath.Join(t.TempDir(), "x.eif")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--init", initPath, "--output", out}, "give an image"},
		{[]string{"--oci-layout", "a", "--tarball", "b", "--init", initPath, "--output", out}, "only one"},
		{[]string{"--rootfs", t.TempDir(), "--init", initPath, "--output", out, "--blobs", blobs}, "--process or the command"},
		{[]string{"--oci-layout", t.TempDir(), "--output", out}, "--init and --output"},
		{[]string{"--oci-layout", t.TempDir(), "--output", out, "--blobs", blobs, "--init", dynamicExecutable(t)}, "is dynamically linked"},
		{[]string{"--oci-layout", t.TempDir(), "--output", out, "--blobs", blobs, "--init", filepath.Join(filepath.Dir(blobs), "blobs", "cmdline")}, "not an ELF executable"},
		{[]string{"--oci-layout", t.TempDir(), "--init", initPath, "--output", out, "--blobs", blobs, "--signing-certificate", "c"}, "both"},
	} {
		_, err := runEIFCLI(t, append([]string{"build"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("build %v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed build left its output")
	}
}

// staticELF is a minimal statically linked x86-64 ELF header: what the
// build's init check needs to see (the fake blob set never boots).
func staticELF() []byte {
	b := make([]byte, 64)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	binary.LittleEndian.PutUint16(b[16:], 2)  // ET_EXEC
	binary.LittleEndian.PutUint16(b[18:], 62) // EM_X86_64
	binary.LittleEndian.PutUint32(b[20:], 1)
	binary.LittleEndian.PutUint16(b[52:], 64)
	binary.LittleEndian.PutUint16(b[54:], 56)
	return b
}

// dynamicExecutable is a real dynamically linked executable of the host.
func dynamicExecutable(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no `true` executable on this host")
	}
	return p
}

// TestRunRefusesDynamicInit: `nitropod run` builds an EIF too and checks
// its --init the same way, before anything is built or booted.
func TestRunRefusesDynamicInit(t *testing.T) {
	blobs, _ := fakeBlobSet(t)
	cmd := newRunCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SilenceUsage = true
	cmd.SetArgs([]string{"--oci-layout", t.TempDir(), "--blobs", blobs, "--init", dynamicExecutable(t)})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "is dynamically linked") {
		t.Errorf("run with a dynamic init: %v, want a refusal", err)
	}
}
