package shim_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/license"
)

// TestNodeEnclaveLimitThroughShim: under a licence that allows one enclave
// per node, the real shim counts the enclave container already running
// (from its bundle's state file and live launcher) and refuses a second at
// Create; once the first is gone, another one runs.
func TestNodeEnclaveLimitThroughShim(t *testing.T) {
	testenv.Integration(t)
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))

	issuer, err := license.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pub, err := license.MarshalPublicKey(issuer.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(dir, "issuers.pem")
	if err := os.WriteFile(keys, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	lic, err := license.Issue(license.Terms{Licensee: "One Enclave Corp", Issued: now.Add(-time.Hour), Expires: now.Add(time.Hour),
		Limits: license.Limits{MaxEnclavesPerNode: 1}}, issuer)
	if err != nil {
		t.Fatal(err)
	}
	licDir := filepath.Join(dir, "licence")
	if err := os.MkdirAll(licDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(licDir, nitropod.LicenseSecretKey), lic, 0o644); err != nil {
		t.Fatal(err)
	}
	e.Configure(t, fmt.Sprintf("[license]\nenforce = true\nkeys_file = %q", keys))
	extra := []string{"--annotation", nitropod.CRISandboxNamespace + "=default",
		"--mount", "type=bind,src=" + licDir + ",dst=" + nitropod.LicenseDir + ",options=rbind:ro"}

	e.runDetached(t, ctx, extra, "first", "sh", "-c", "exec sleep 1000")
	defer e.remove(ctx, "first")
	e.waitStatus(t, ctx, "first", "RUNNING", 3*time.Minute)

	// What the count reads, independently of the cgroup version: the
	// state file in the bundle (containerd's <task dir>/<namespace>/<id>)
	// names a live process called nitropod-launcher.
	b, err := os.ReadFile(filepath.Join(e.Ctrd.State, "io.containerd.runtime.v2.task", ns, "first", "nitropod-state.json"))
	if err != nil {
		t.Fatalf("the running enclave container's state file: %v", err)
	}
	var st struct {
		LauncherPid int `json:"launcherPid"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.LauncherPid <= 0 {
		t.Fatalf("state file %s: %v", b, err)
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", st.LauncherPid))
	if err != nil || strings.TrimSpace(string(comm)) != "nitropod-launch" {
		t.Fatalf("launcher pid %d: comm %q, %v; want nitropod-launch (nitropod-launcher cut to 15 bytes)", st.LauncherPid, comm, err)
	}

	out, err := e.run(ctx, extra, busyboxRef, "second", "sh", "-c", "echo second ran").CombinedOutput()
	e.remove(ctx, "second")
	want := "allows 1 enclaves per node, this node would run 2"
	if err == nil || !strings.Contains(string(out), want) || strings.Contains(string(out), "second ran") {
		t.Fatalf("second enclave with one running: %v\n%s\nwant a refusal containing %q", err, out, want)
	}
	t.Logf("refused: %s", strings.TrimSpace(string(out)))

	e.remove(ctx, "first")
	out, err = e.run(ctx, extra, busyboxRef, "third", "sh", "-c", "echo third ran").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "third ran") {
		t.Fatalf("an enclave after the first was removed: %v\n%s", err, out)
	}
}
