package license_test

// Licence enforcement through the real shim: containerd (private instance,
// ctrtest), containerd-shim-nitro-v1, the launcher and an emulated enclave
// under QEMU. The shim's config is rewritten between runs (it is read at
// every Create).

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/license"
	"github.com/nitropod/nitropod/test/images"
)

const (
	shimNS     = "licencetest"
	busyboxRef = "docker.io/library/busybox:latest"
)

// shimEnv is a private containerd with freshly built nitropod binaries
// (shimtest); its shim config's [license] table changes between runs.
type shimEnv struct{ *shimtest.Env }

func newShimEnv(t *testing.T) *shimEnv {
	t.Helper()
	return &shimEnv{shimtest.Start(t, shimtest.Options{})}
}

// configure writes the shim config with the given [license] table body.
func (e *shimEnv) configure(t *testing.T, licence string) {
	t.Helper()
	e.Configure(t, "[license]\n"+licence)
}

// run is `ctr run --rm --runtime io.containerd.nitro.v1 [--mount licence] busybox ID sh -c SCRIPT`.
func (e *shimEnv) run(ctx context.Context, id, licenceDir, script string, extra ...string) (string, error) {
	args := []string{"run", "--rm", "--runtime", nitropod.RuntimeType,
		"--annotation", nitropod.CRISandboxNamespace + "=default"}
	if licenceDir != "" {
		args = append(args, "--mount", "type=bind,src="+licenceDir+",dst="+nitropod.LicenseDir+",options=rbind:ro")
	}
	args = append(args, extra...)
	args = append(args, busyboxRef, id, "sh", "-c", script)
	out, err := e.Ctrd.Ctr(ctx, shimNS, args...)
	return out, err
}

func writeLicence(t *testing.T, dir string, terms license.Terms, k ed25519.PrivateKey) string {
	t.Helper()
	d := filepath.Join(dir, strings.ReplaceAll(terms.Licensee, " ", "-"))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := license.Issue(terms, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, nitropod.LicenseSecretKey), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestLicenceThroughShim(t *testing.T) {
	e := newShimEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := images.Busybox(testenv.Binary(t, "busybox"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Ctrd.Import(ctx, shimNS, busyboxRef, img); err != nil {
		t.Fatal(err)
	}

	issuer, err := license.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pub, _ := license.MarshalPublicKey(issuer.Public().(ed25519.PublicKey))
	keys := filepath.Join(dir, "issuers.pem")
	if err := os.WriteFile(keys, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	valid := writeLicence(t, dir, license.Terms{Licensee: "Valid Corp", Issued: now.Add(-24 * time.Hour), Expires: now.Add(30 * 24 * time.Hour)}, issuer)
	expiredOn := now.Add(-24 * time.Hour).Truncate(24 * time.Hour)
	expired := writeLicence(t, dir, license.Terms{Licensee: "Expired Corp", Issued: expiredOn.Add(-30 * 24 * time.Hour), Expires: expiredOn}, issuer)
	prodOnly := writeLicence(t, dir, license.Terms{Licensee: "Prod Corp", Issued: now.Add(-time.Hour), Expires: now.Add(time.Hour),
		Limits: license.Limits{Namespaces: []string{"prod"}}}, issuer)
	// The licence must not reach the enclave (it is a volume, not part of
	// the image) nor the cache key (both runs below share one EIF).
	script := "echo licensed enclave ran; if [ -e " + nitropod.LicensePath + " ]; then echo LICENCE-INSIDE; fi"

	otherCluster := writeLicence(t, dir, license.Terms{Licensee: "Cluster B Corp", Issued: now.Add(-time.Hour), Expires: now.Add(time.Hour),
		Limits: license.Limits{Cluster: "cluster-b"}}, issuer)
	// What a Pod can put in its licence volume instead of a licence: a link
	// to another Pod's licence, a FIFO.
	linked := filepath.Join(dir, "linked")
	fifo := filepath.Join(dir, "fifo")
	for _, d := range []string{linked, fifo} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../Valid-Corp/"+nitropod.LicenseSecretKey, filepath.Join(linked, nitropod.LicenseSecretKey)); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(fifo, nitropod.LicenseSecretKey), 0o600); err != nil {
		t.Fatal(err)
	}

	// The node names its cluster; the unbound valid licence still runs.
	e.configure(t, fmt.Sprintf("enforce = true\nkeys_file = %q\ncluster_id = \"cluster-a\"", keys))
	t.Run("valid licence runs", func(t *testing.T) {
		out, err := e.run(ctx, "valid", valid, script)
		if err != nil || !strings.Contains(out, "licensed enclave ran") {
			t.Fatalf("ctr run with a valid licence: %v\n%s", err, out)
		}
		if strings.Contains(out, "LICENCE-INSIDE") {
			t.Error("the licence file is visible inside the enclave")
		}
	})
	refusals := []struct {
		name, id, dir, want string
	}{
		{"expired licence is refused", "expired", expired, "expired on " + expiredOn.Format(time.DateOnly)},
		{"missing licence is refused", "missing", "", "no licence"},
		{"namespace not allowed", "ns", prodOnly, `does not allow namespace "default"`},
		{"licence bound to another cluster", "cluster", otherCluster, `bound to cluster "cluster-b", this node is in cluster "cluster-a"`},
		{"link to another Pod's licence", "linked", linked, "outside the volume"},
		{"FIFO instead of a licence", "fifo", fifo, "FIFO"},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			out, err := e.run(ctx, r.id, r.dir, script)
			if err == nil || !strings.Contains(out, r.want) {
				t.Fatalf("ctr run: %v, output:\n%s\nwant a failure mentioning %q", err, out, r.want)
			}
			if strings.Contains(out, "licensed enclave ran") {
				t.Error("the enclave ran")
			}
			t.Logf("refused: %s", strings.TrimSpace(out))
		})
	}

	e.configure(t, "enforce = false")
	t.Run("enforcement off runs without a licence", func(t *testing.T) {
		out, err := e.run(ctx, "unenforced", "", script)
		if err != nil || !strings.Contains(out, "licensed enclave ran") {
			t.Fatalf("ctr run without a licence, enforcement off: %v\n%s", err, out)
		}
	})

	eifs, _ := filepath.Glob(filepath.Join(e.CacheDir, "*.eif"))
	if len(eifs) != 1 {
		t.Errorf("cache holds %d EIFs after runs with and without a licence, want 1 (the licence is not part of the key): %v", len(eifs), eifs)
	}
	if out, err := e.Ctrd.Ctr(ctx, shimNS, "task", "ls", "-q"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("tasks left: %q (%v)", out, err)
	}
}
