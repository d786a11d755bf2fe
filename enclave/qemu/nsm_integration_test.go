package qemu_test

import (
	"bytes"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nitropod/nitropod/attestation"
	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/qemu"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

var (
	nsmClientOnce sync.Once
	nsmClient     []byte
	nsmClientErr  error
)

// nsmClientBinary builds testdata/nsmclient (static), a program that uses
// the NSM driver's raw ioctl.
func nsmClientBinary(t *testing.T) []byte {
	t.Helper()
	nsmClientOnce.Do(func() {
		out := filepath.Join(t.TempDir(), "nsmclient")
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./testdata/nsmclient")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			nsmClientErr = &buildError{err, b}
			return
		}
		nsmClient, nsmClientErr = os.ReadFile(out)
	})
	if nsmClientErr != nil {
		t.Fatalf("building nsmclient: %v", nsmClientErr)
	}
	return nsmClient
}

// nsmBackend is a TCG backend whose emulation CA lives in its own directory.
func nsmBackend(t *testing.T) (*qemu.Backend, string) {
	t.Helper()
	testenv.Integration(t)
	bin := testenv.Binary(t, qemu.DefaultBinary)
	dir, caDir := t.TempDir(), t.TempDir()
	b, err := qemu.New(qemu.Config{Binary: bin, WorkDir: dir, AttestationDir: caDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checkClean(t, dir) })
	return b, caDir
}

func nsmImageEIF(t *testing.T, cmd ...string) string {
	t.Helper()
	layer := testimage.Layer(t, testimage.Reg("nsmclient", 0o755, string(nsmClientBinary(t))))
	img := testimage.Image(t, []v1.Layer{testimage.Layer(t, testimage.BusyboxFiles(t)...), layer},
		testimage.Cmd(cmd...), testimage.User("33:33"))
	return buildEIF(t, img, false)
}

func outputValues(out string) map[string]string {
	kv := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
	}
	return kv
}

// An app running as uid 33 opens /dev/nsm and, with the driver's raw ioctl,
// gets an attestation document that carries the booted EIF's measurements,
// its nonce and user data, and verifies against the node's emulation root;
// the HTTP API returns an equivalent document; PCR16 extends, describes and
// locks as on Nitro; a flipped byte makes the verifier refuse the document.
func TestEmulatedNSM(t *testing.T) {
	b, caDir := nsmBackend(t)
	nonce, userData := "6e6f6e63652d3432", "7573657264617461"
	path := nsmImageEIF(t, "sh", "-c", "/nsmclient attest "+nonce+" "+userData+" && /nsmclient pcr")
	var out, errb bytes.Buffer
	st, err := run(t, b, enclave.Request{EIFPath: path}, enclave.RunIO{Stdout: &out, Stderr: &errb})
	t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	if err != nil || st.Code != 0 {
		t.Fatalf("app: status %+v, %v", st, err)
	}
	kv := outputValues(out.String())
	if kv["UID"] != "33" {
		t.Errorf("the app ran as uid %q, want 33", kv["UID"])
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	ef, err := eif.Open(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ef.Verify()
	if err != nil {
		t.Fatal(err)
	}
	pcrs := map[int][]byte{}
	for i, h := range map[int]string{0: rep.Measurements.PCR0, 1: rep.Measurements.PCR1, 2: rep.Measurements.PCR2} {
		pcrs[i], _ = hex.DecodeString(h)
	}
	root, err := attestation.ParseRootPEM(mustRead(t, filepath.Join(caDir, attestation.EmulationRootFile)))
	if err != nil {
		t.Fatal(err)
	}
	wantNonce, _ := hex.DecodeString(nonce)
	wantUD, _ := hex.DecodeString(userData)
	var docs [][]byte
	for _, k := range []string{"DOC", "HTTPDOC"} {
		doc, err := base64.StdEncoding.DecodeString(kv[k])
		if err != nil || len(doc) == 0 {
			t.Fatalf("%s: no document in the app's output (%v)", k, err)
		}
		d, err := attestation.Verify(doc, attestation.VerifyOptions{Root: root, PCRs: pcrs, Nonce: wantNonce})
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if !bytes.Equal(d.UserData, wantUD) || d.PublicKey != nil || len(d.PCRs) != 16 {
			t.Errorf("%s: user_data %x public_key %x, %d PCRs; want %x, none, 16", k, d.UserData, d.PublicKey, len(d.PCRs), wantUD)
		}
		for i := 3; i < 16; i++ {
			if !bytes.Equal(d.PCRs[i], make([]byte, 48)) {
				t.Errorf("%s: PCR%d is %x, want zero", k, i, d.PCRs[i])
			}
		}
		if !strings.Contains(d.ModuleID, "emulated") {
			t.Errorf("%s: module_id %q does not say it is emulated", k, d.ModuleID)
		}
		// AWS's root (the default) refuses it.
		if _, err := attestation.Verify(doc, attestation.VerifyOptions{}); err == nil || !strings.Contains(err.Error(), attestation.CheckChain) {
			t.Errorf("%s: verified against AWS's root: %v", k, err)
		}
		docs = append(docs, doc)
	}
	// The CLI: `nitropod eif describe` gives the same PCRs, and `nitropod
	// attestation verify --root` accepts the document with them.
	cli := nitropodCLI(t)
	desc, err := exec.Command(cli, "eif", "describe", path).Output()
	if err != nil {
		t.Fatalf("nitropod eif describe: %v", err)
	}
	var dj struct{ Measurements eif.Measurements }
	if err := json.Unmarshal(desc, &dj); err != nil {
		t.Fatalf("nitropod eif describe output: %v", err)
	}
	args := []string{"attestation", "verify", "-", "--root", filepath.Join(caDir, attestation.EmulationRootFile), "--nonce", nonce}
	for i, h := range []string{dj.Measurements.PCR0, dj.Measurements.PCR1, dj.Measurements.PCR2} {
		if h != hex.EncodeToString(pcrs[i]) {
			t.Errorf("nitropod eif describe PCR%d %s, the launcher measured %x", i, h, pcrs[i])
		}
		args = append(args, "--pcr", strconv.Itoa(i)+"="+h)
	}
	for _, k := range []string{"DOC", "HTTPDOC"} {
		cmd := exec.Command(cli, args...)
		cmd.Stdin = strings.NewReader(kv[k])
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), `"module_id"`) {
			t.Errorf("nitropod attestation verify %s: %v\n%s", k, err, out)
		}
	}
	bad, _ := base64.StdEncoding.DecodeString(kv["DOC"])
	bad[len(bad)-10] ^= 0x01
	cmd := exec.Command(cli, args...)
	cmd.Stdin = bytes.NewReader(bad)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "signature check failed") {
		t.Errorf("nitropod attestation verify of a flipped byte: %v\n%s", err, out)
	}

	if kv["HTTPSTATUS"] != "200" {
		t.Errorf("HTTP API status %s, want 200", kv["HTTPSTATUS"])
	}
	if kv["BIGUSERDATA"] != "InputTooLarge" {
		t.Errorf("513 bytes of user data: %q, want InputTooLarge", kv["BIGUSERDATA"])
	}
	// A flipped byte in the signature, in the payload.
	for _, pos := range []int{len(docs[0]) - 5, len(docs[0]) / 2} {
		bad := bytes.Clone(docs[0])
		bad[pos] ^= 0x01
		if _, err := attestation.Verify(bad, attestation.VerifyOptions{Root: root}); err == nil {
			t.Errorf("a document with byte %d flipped verified", pos)
		}
	}

	h := sha512.New384()
	h.Write(make([]byte, 48))
	h.Write([]byte("nitropod"))
	want := hex.EncodeToString(h.Sum(nil))
	if kv["EXTENDED"] != want || kv["DESCRIBED"] != want || kv["LOCK"] != "false" {
		t.Errorf("ExtendPCR 16 gave %s, DescribePCR %s (lock %s); want %s, unlocked", kv["EXTENDED"], kv["DESCRIBED"], kv["LOCK"], want)
	}
	if kv["LOCKED"] != "LockPCR" || kv["EXTENDLOCKED"] != "ReadOnlyIndex" || kv["EXTENDPCR0"] != "ReadOnlyIndex" {
		t.Errorf("LockPCR %q, extend after lock %q, extend PCR0 %q; want LockPCR, ReadOnlyIndex, ReadOnlyIndex", kv["LOCKED"], kv["EXTENDLOCKED"], kv["EXTENDPCR0"])
	}
}

var (
	cliOnce sync.Once
	cliPath string
	cliErr  error
)

// nitropodCLI builds the nitropod command once per test binary.
func nitropodCLI(t *testing.T) string {
	t.Helper()
	cliOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nitropod-cli-")
		if err != nil {
			cliErr = err
			return
		}
		cliPath = filepath.Join(dir, "nitropod")
		if b, err := exec.Command("go", "build", "-o", cliPath, "github.com/nitropod/nitropod/cmd/nitropod").CombinedOutput(); err != nil {
			cliErr = &buildError{err, b}
		}
	})
	if cliErr != nil {
		t.Fatalf("building nitropod: %v", cliErr)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(cliPath)) })
	return cliPath
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEmulatedNSMLatency measures GetAttestationDoc from inside the guest:
// NITROPOD_BENCH_NSM_CALLS calls (make bench-attestation sets 1000) by a
// static program with the raw ioctl; it logs p50 and p99.
func TestEmulatedNSMLatency(t *testing.T) {
	n := os.Getenv("NITROPOD_BENCH_NSM_CALLS")
	if n == "" {
		t.Skip("set NITROPOD_BENCH_NSM_CALLS (make bench-attestation)")
	}
	b, _ := nsmBackend(t)
	path := nsmImageEIF(t, "/nsmclient", "bench", n)
	var out, errb bytes.Buffer
	st, err := run(t, b, enclave.Request{EIFPath: path, CPUs: 2}, enclave.RunIO{Stdout: &out, Stderr: &errb})
	if err != nil || st.Code != 0 {
		t.Fatalf("app: status %+v, %v\n%s%s", st, err, out.String(), errb.String())
	}
	kv := outputValues(out.String())
	if kv["P50"] == "" {
		t.Fatalf("no result:\n%s", out.String())
	}
	t.Logf("GetAttestationDoc in emulation, %s calls in %s: p50 %s, p99 %s, max %s, mean %s (guest clocksource %s)", kv["N"], kv["WALL"], kv["P50"], kv["P99"], kv["MAX"], kv["MEAN"], kv["CLOCKSOURCE"])
}
