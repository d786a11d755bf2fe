package build

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/cpio"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

// fakeBlobs writes a blob set whose "kernel" is not bootable: enough for
// building and measuring (boot tests live with the enclave backends).
func fakeBlobs(t *testing.T, order bool) (blobs, initPath string) {
	t.Helper()
	d := t.TempDir()
	blobs = filepath.Join(d, "blobs")
	if err := os.Mkdir(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"bzImage": "not a kernel", "cmdline": "console=ttyS0 quiet\n", "b.ko": "B", "a.ko": "A"}
	if order {
		files["modules.order"] = "b.ko\na.ko\n"
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(blobs, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	initPath = filepath.Join(d, "init")
	if err := os.WriteFile(initPath, []byte("#!init"), 0o755); err != nil {
		t.Fatal(err)
	}
	return blobs, initPath
}

func TestLoadBlobSet(t *testing.T) {
	for _, order := range []bool{false, true} {
		blobs, _ := fakeBlobs(t, order)
		b, err := LoadBlobSet(blobs)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range b.Modules {
			got = append(got, filepath.Base(m))
		}
		want := []string{"a.ko", "b.ko"}
		if order {
			want = []string{"b.ko", "a.ko"}
		}
		if d := cmp.Diff(want, got); d != "" || b.Cmdline != "console=ttyS0 quiet" {
			t.Errorf("order=%v: modules (-want +got):\n%s cmdline %q", order, d, b.Cmdline)
		}
	}
	// AWS's blob set: bzImage, cmdline, nsm.ko (and other files that are not modules).
	aws := t.TempDir()
	for n, c := range map[string]string{"bzImage": "k", "bzImage.config": "cfg", "cmdline": "reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on\n", "nsm.ko": "nsm", "init": "aws init"} {
		if err := os.WriteFile(filepath.Join(aws, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := LoadBlobSet(aws)
	if err != nil || len(b.Modules) != 1 || filepath.Base(b.Modules[0]) != "nsm.ko" || !strings.HasSuffix(b.Cmdline, "random.trust_cpu=on") {
		t.Errorf("AWS blob set: %+v, %v", b, err)
	}
	if _, err := LoadBlobSet(t.TempDir()); err == nil || !strings.Contains(err.Error(), "bzImage") {
		t.Errorf("empty dir: err = %v", err)
	}
}

func buildImage(t *testing.T, img v1.Image, ov Overrides, opts Options) ([]byte, eif.Measurements) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "out.eif")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := FromImage(f, img, ov, opts)
	if err != nil {
		t.Fatalf("FromImage: %v", err)
	}
	b, _ := os.ReadFile(p)
	return b, m
}

// sections opens an EIF and returns its report and sections' data.
func sections(t *testing.T, b []byte) (*eif.Report, map[eif.SectionType][][]byte) {
	t.Helper()
	f, err := eif.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := f.Verify()
	if err != nil {
		t.Fatal(err)
	}
	out := map[eif.SectionType][][]byte{}
	for _, s := range f.Sections {
		d, _ := io.ReadAll(f.Data(s))
		out[s.Type] = append(out[s.Type], d)
	}
	return rep, out
}

func cpioFiles(t *testing.T, rd []byte) map[string]string {
	t.Helper()
	r := cpio.NewReader(bytes.NewReader(rd))
	out := map[string]string{}
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		d, _ := io.ReadAll(r)
		out[h.Name] = string(d) + h.Linkname
	}
}

func TestFromImage(t *testing.T) {
	blobs, initPath := fakeBlobs(t, true)
	img := testimage.Busybox(t, testimage.Entrypoint("httpd", "-f"), testimage.Cmd("-p", "80"), testimage.User("www-data"), testimage.WorkingDir("/var/www"), testimage.ExposedPorts("80/tcp", "53/udp"))
	opts := Options{Blobs: blobs, Init: initPath, Name: "web", Version: "1", BuildTime: time.Unix(1700000000, 0), CustomMetadata: json.RawMessage(`{"team":"x"}`)}
	b1, m := buildImage(t, img, Overrides{Env: []string{"A=1"}}, opts)
	b2, _ := buildImage(t, img, Overrides{Env: []string{"A=1"}}, opts)
	if !bytes.Equal(b1, b2) {
		t.Fatal("building the same image twice gave different EIFs")
	}
	rep, secs := sections(t, b1)
	if d := cmp.Diff(m, rep.Measurements); d != "" {
		t.Errorf("measurements (-build +verify):\n%s", d)
	}
	if got := string(secs[eif.SectionCmdline][0]); got != "console=ttyS0 quiet" {
		t.Errorf("cmdline %q", got)
	}
	if rep.Metadata == nil || rep.Metadata.ImageName != "web" || rep.Metadata.Build.BuildTime != "2023-11-14T22:13:20+00:00" || string(rep.Metadata.CustomMetadata) != `{"team":"x"}` {
		t.Errorf("metadata %+v", rep.Metadata)
	}
	if len(secs[eif.SectionRamdisk]) != 2 {
		t.Fatalf("%d ramdisks", len(secs[eif.SectionRamdisk]))
	}
	boot := cpioFiles(t, secs[eif.SectionRamdisk][0])
	if boot["init"] != "#!init" || boot["nitropod/modules/00-b.ko"] != "B" || boot["nitropod/modules/01-a.ko"] != "A" {
		t.Errorf("bootstrap ramdisk: %v", boot)
	}
	cust := cpioFiles(t, secs[eif.SectionRamdisk][1])
	bb, _ := os.ReadFile(testimage.BusyboxPath)
	if cust["rootfs/bin/busybox"] != string(bb) || cust["rootfs/bin/httpd"] != "busybox" {
		t.Error("customer ramdisk lacks busybox")
	}
	var p ramdisk.Process
	if err := json.Unmarshal([]byte(cust[ramdisk.ProcessPath]), &p); err != nil {
		t.Fatal(err)
	}
	want := ramdisk.Process{Args: []string{"httpd", "-f", "-p", "80"}, Env: []string{"PATH=/bin", "A=1"}, Cwd: "/var/www", UID: 33, GID: 33, Ports: []uint16{80}}
	if d := cmp.Diff(want, p); d != "" {
		t.Errorf("process (-want +got):\n%s", d)
	}
	// The build time is metadata only: not measured.
	opts.BuildTime = time.Unix(1, 0)
	b3, m3 := buildImage(t, img, Overrides{Env: []string{"A=1"}}, opts)
	if bytes.Equal(b1, b3) || m3 != m {
		t.Errorf("another build time: same bytes %v, same measurements %v (want different bytes, same PCRs)", bytes.Equal(b1, b3), m3 == m)
	}
	// A different process is measured (PCR2 and PCR0), the bootstrap is not changed (PCR1).
	_, m4 := buildImage(t, img, Overrides{Env: []string{"A=2"}}, opts)
	if m4.PCR0 == m.PCR0 || m4.PCR2 == m.PCR2 || m4.PCR1 != m.PCR1 {
		t.Errorf("changed env: %+v vs %+v", m4, m)
	}
}

func TestSourceDateEpoch(t *testing.T) {
	t.Setenv(SourceDateEpochEnv, "86400")
	got, err := TimeFromEnv()
	if err != nil || !got.Equal(time.Unix(86400, 0)) {
		t.Errorf("TimeFromEnv = %v, %v", got, err)
	}
	t.Setenv(SourceDateEpochEnv, "yesterday")
	if _, err := TimeFromEnv(); err == nil {
		t.Error("a non-numeric SOURCE_DATE_EPOCH was accepted")
	}
}

func TestFromRootfsSigned(t *testing.T) {
	blobs, initPath := fakeBlobs(t, false)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "app"), []byte("app"), 0o755); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := testCert(t)
	signer, err := eif.NewSigner(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "x.eif")
	f, _ := os.Create(p)
	defer f.Close()
	m, err := FromRootfs(f, root, ramdisk.Process{Args: []string{"/bin/app"}}, Options{Blobs: blobs, Init: initPath, Signer: signer, DebugCmdline: true, BuildTime: time.Unix(0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	rep, secs := sections(t, b)
	if !rep.SignatureOK || m.PCR8 == "" || rep.Measurements != m {
		t.Errorf("signed build: report %+v, measurements %+v", rep, m)
	}
	if got := string(secs[eif.SectionCmdline][0]); got != "console=ttyS0" {
		t.Errorf("debug cmdline %q", got)
	}
	cust := cpioFiles(t, secs[eif.SectionRamdisk][1])
	for _, d := range ramdisk.RequiredDirs {
		if _, ok := cust["rootfs/"+d]; !ok {
			t.Errorf("rootfs/%s missing", d)
		}
	}
	if cust["rootfs/bin/app"] != "app" || cust[ramdisk.CmdPath] != "/bin/app\n" {
		t.Errorf("customer ramdisk: %v", cust)
	}
}

func testCert(t *testing.T) (certPEM, keyPEM []byte) {
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func TestProcessFromConfig(t *testing.T) {
	passwd := []byte("root:x:0:0::/root:/bin/sh\nweb:x:33:44::/:/bin/sh\n")
	group := []byte("root:x:0:\nwebg:x:44:\nextra:x:55:web,other\nmore:x:56:web\n")
	cfg := func(c v1.Config) *v1.ConfigFile { return &v1.ConfigFile{Config: c} }
	for _, tc := range []struct {
		name    string
		cfg     v1.Config
		ov      Overrides
		want    ramdisk.Process
		wantErr string
	}{
		{"defaults", v1.Config{Cmd: []string{"sh"}}, Overrides{},
			ramdisk.Process{Args: []string{"sh"}, Env: []string{DefaultPath}, Cwd: "/"}, ""},
		{"entrypoint and cmd", v1.Config{Entrypoint: []string{"e"}, Cmd: []string{"c"}, Env: []string{"PATH=/x", "A=1"}, WorkingDir: "/w"}, Overrides{Env: []string{"A=2", "B=3"}},
			ramdisk.Process{Args: []string{"e", "c"}, Env: []string{"PATH=/x", "A=2", "B=3"}, Cwd: "/w"}, ""},
		{"entrypoint override drops cmd", v1.Config{Entrypoint: []string{"e"}, Cmd: []string{"c"}}, Overrides{Entrypoint: []string{"x"}},
			ramdisk.Process{Args: []string{"x"}, Env: []string{DefaultPath}, Cwd: "/"}, ""},
		{"cmd override", v1.Config{Entrypoint: []string{"e"}, Cmd: []string{"c"}}, Overrides{Cmd: []string{"d"}, Cwd: "/o"},
			ramdisk.Process{Args: []string{"e", "d"}, Env: []string{DefaultPath}, Cwd: "/o"}, ""},
		{"user by name", v1.Config{Cmd: []string{"sh"}, User: "web"}, Overrides{},
			ramdisk.Process{Args: []string{"sh"}, Env: []string{DefaultPath}, Cwd: "/", UID: 33, GID: 44, AdditionalGIDs: []uint32{55, 56}}, ""},
		{"user:group names", v1.Config{Cmd: []string{"sh"}}, Overrides{User: "web:extra"},
			ramdisk.Process{Args: []string{"sh"}, Env: []string{DefaultPath}, Cwd: "/", UID: 33, GID: 55, AdditionalGIDs: []uint32{56}}, ""},
		{"numeric unknown", v1.Config{Cmd: []string{"sh"}, User: "1000:2000"}, Overrides{},
			ramdisk.Process{Args: []string{"sh"}, Env: []string{DefaultPath}, Cwd: "/", UID: 1000, GID: 2000}, ""},
		{"numeric known uid", v1.Config{Cmd: []string{"sh"}, User: "33"}, Overrides{},
			ramdisk.Process{Args: []string{"sh"}, Env: []string{DefaultPath}, Cwd: "/", UID: 33, GID: 44, AdditionalGIDs: []uint32{55, 56}}, ""},
		{"ports", v1.Config{Cmd: []string{"sh"}, ExposedPorts: map[string]struct{}{"8080/tcp": {}, "80": {}, "53/udp": {}}}, Overrides{},
			ramdisk.Process{Args: []string{"sh"}, Env: []string{DefaultPath}, Cwd: "/", Ports: []uint16{80, 8080}}, ""},
		{"unknown user", v1.Config{Cmd: []string{"sh"}, User: "nobody"}, Overrides{}, ramdisk.Process{}, `user "nobody" is not in the image's /etc/passwd`},
		{"unknown group", v1.Config{Cmd: []string{"sh"}, User: "web:nogroup"}, Overrides{}, ramdisk.Process{}, `group "nogroup"`},
		{"no command", v1.Config{}, Overrides{}, ramdisk.Process{}, "no entrypoint or command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ProcessFromConfig(cfg(tc.cfg), tc.ov, passwd, group)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("process (-want +got):\n%s", d)
			}
		})
	}
}

func TestDebugCmdline(t *testing.T) {
	for in, want := range map[string]string{
		"console=ttyS0 panic=-1 quiet reboot=t": "console=ttyS0 panic=-1 reboot=t",
		"quiet":                                 "console=ttyS0",
		"console=hvc0":                          "console=hvc0",
	} {
		if got := DebugCmdline(in); got != want {
			t.Errorf("DebugCmdline(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestKernelVersionEmuBlobs(t *testing.T) {
	testenv.Integration(t)
	blobs := testenv.EmuBlobs(t)
	v := KernelVersion(filepath.Join(blobs, "bzImage"))
	if !strings.HasPrefix(v, "6.") {
		t.Errorf("KernelVersion of the emulation kernel = %q, want 6.x", v)
	}
	if KernelVersion(filepath.Join(blobs, "cmdline")) != "" {
		t.Error("KernelVersion of a non-kernel is not empty")
	}
}

func TestProcessFromSpec(t *testing.T) {
	s := &specs.Spec{Hostname: "h", Process: &specs.Process{Args: []string{"a", "b"}, Env: []string{"X=1"}, Cwd: "/w", User: specs.User{UID: 5, GID: 6, AdditionalGids: []uint32{6, 7}}}}
	got, err := ProcessFromSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	want := ramdisk.Process{Args: []string{"a", "b"}, Env: []string{"X=1"}, Cwd: "/w", UID: 5, GID: 6, AdditionalGIDs: []uint32{7}, Hostname: "h"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if _, err := ProcessFromSpec(&specs.Spec{}); err == nil {
		t.Error("a spec without process was accepted")
	}
}

func TestOSAndKernel(t *testing.T) {
	d := t.TempDir()
	k := filepath.Join(d, "bzImage")
	if err := os.WriteFile(k, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &BlobSet{Kernel: k}
	if o, v := b.OSAndKernel(); o != "Linux" || v != "" {
		t.Errorf("without config: %q %q", o, v)
	}
	cfg := "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 4.14.177-139.254.amzn2.x86_64 Kernel Configuration\n#\n"
	if err := os.WriteFile(k+".config", []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if o, v := b.OSAndKernel(); o != "Linux" || v != "4.14.177" {
		t.Errorf("with AWS's config: %q %q, want Linux 4.14.177", o, v)
	}
}
