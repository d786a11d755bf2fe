package shim

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/license"
	"github.com/nitropod/nitropod/shim/launcher"
)

// fakeNitroCLI is a FAKE nitro-cli (no Nitro hardware exists here): a
// script that records its arguments and answers terminate-enclave the way
// nitro-cli does (enclave/nitrocli/testdata).
func fakeNitroCLI(t *testing.T, id string) (bin, argsFile string) {
	t.Helper()
	dir := t.TempDir()
	argsFile = filepath.Join(dir, "args")
	bin = filepath.Join(dir, "nitro-cli")
	script := "#!/bin/sh\necho \"$@\" >> " + argsFile + "\n" +
		"printf '{\\n  \"EnclaveName\": \"c0ffee\",\\n  \"EnclaveID\": \"" + id + "\",\\n  \"Terminated\": true\\n}\\n'\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, argsFile
}

func TestCleanupBundleTerminatesRecordedNitroEnclave(t *testing.T) {
	const id = "i-05f6ed443aEXAMPLE-enc173c1b7f8EXAMPLE"
	bin, argsFile := fakeNitroCLI(t, id)
	bundle := t.TempDir()
	if err := writeState(bundle, bundleState{LauncherPid: 0, Backend: BackendNitroCLI, NitroCLI: bin}); err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(launcher.Record{Backend: BackendNitroCLI, EnclaveID: id, CID: 16, NitroCLI: bin})
	if err := os.WriteFile(filepath.Join(bundle, launcher.RecordFile), rec, 0o600); err != nil {
		t.Fatal(err)
	}
	CleanupBundle(context.Background(), bundle)
	got, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatalf("nitro-cli was not run: %v", err)
	}
	if want := "terminate-enclave --enclave-id " + id; strings.TrimSpace(string(got)) != want {
		t.Errorf("nitro-cli args %q, want %q", got, want)
	}
}

func TestCheckLicense(t *testing.T) {
	cfg := DefaultConfig()
	spec := &specs.Spec{Annotations: map[string]string{nitropod.CRISandboxNamespace: "default"}}
	if err := checkLicense(context.Background(), spec, cfg, 1, 1); err != nil {
		t.Errorf("not enforced: %v", err)
	}
	cfg.License.Enforce = true
	if err := checkLicense(context.Background(), spec, cfg, 1, 1); err == nil || !strings.Contains(err.Error(), "keys_file") {
		t.Errorf("enforced without keys: err = %v", err)
	}
	cfg.License.KeysFile = filepath.Join(t.TempDir(), "missing.pem")
	if err := checkLicense(context.Background(), spec, cfg, 1, 1); err == nil || !strings.Contains(err.Error(), "licence keys") {
		t.Errorf("missing keys file: err = %v", err)
	}
	priv, err := license.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := license.MarshalPublicKey(priv.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	cfg.License.KeysFile = filepath.Join(t.TempDir(), "keys.pem")
	if err := os.WriteFile(cfg.License.KeysFile, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkLicense(context.Background(), spec, cfg, 1, 1); err == nil || !strings.Contains(err.Error(), nitropod.LicenseSecretName) {
		t.Errorf("enforced, no licence mounted: err = %v, want a refusal naming the %s Secret", err, nitropod.LicenseSecretName)
	}
}
