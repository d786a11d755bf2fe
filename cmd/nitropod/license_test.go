package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLicenseCLI(t *testing.T) {
	dir := t.TempDir()
	priv, pub, lic := filepath.Join(dir, "i.key"), filepath.Join(dir, "i.pub"), filepath.Join(dir, "license.yaml")
	if out, err := runCLI(t, "license", "keygen", "--private-key", priv, "--public-key", pub); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	if fi, err := os.Stat(priv); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v, mode %v; want 0600", err, fi.Mode())
	}
	if _, err := runCLI(t, "license", "keygen", "--private-key", priv, "--public-key", pub); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("keygen over an existing key: %v, want a refusal", err)
	}
	if out, err := runCLI(t, "license", "issue", "--key", priv, "--licensee", "Example Corp", "--issued", "2026-01-01",
		"--expires", "2026-01-31", "--namespace", "default", "--max-enclaves-per-pod", "2", "-o", lic); err != nil {
		t.Fatalf("issue: %v\n%s", err, out)
	}
	out, err := runCLI(t, "license", "verify", "--public-key", pub, "--at", "2026-01-15", "--namespace", "default", lic)
	if err != nil || !strings.Contains(out, `valid licence for "Example Corp"`) {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--at", "2026-02-01", "--namespace", "default"}, "expired on 2026-01-31"},
		{[]string{"--at", "2025-12-01", "--namespace", "default"}, "not valid before 2026-01-01"},
		{[]string{"--at", "2026-01-15", "--namespace", "prod"}, `does not allow namespace "prod"`},
		{[]string{"--at", "2026-01-15", "--namespace", "default", "--enclaves-in-pod", "3"}, "allows 2 enclaves per Pod"},
	}
	for _, tc := range tests {
		args := append([]string{"license", "verify", "--public-key", pub}, tc.args...)
		_, err := runCLI(t, append(args, lic)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("verify %v: %v, want exit 1 with %q", tc.args, err, tc.want)
		}
	}
	// Another issuer's key does not verify it.
	other := filepath.Join(dir, "o.pub")
	if _, err := runCLI(t, "license", "keygen", "--private-key", filepath.Join(dir, "o.key"), "--public-key", other); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "license", "verify", "--public-key", other, "--at", "2026-01-15", "--namespace", "default", "--enclaves-in-pod", "1", lic); err == nil || !strings.Contains(err.Error(), "not signed by a trusted key") {
		t.Errorf("verify with another key: %v", err)
	}
	// --cluster binds the licence; verify checks it against the node's cluster.
	bound := filepath.Join(dir, "bound.yaml")
	if out, err := runCLI(t, "license", "issue", "--key", priv, "--licensee", "Example Corp", "--issued", "2026-01-01",
		"--expires", "2026-01-31", "--cluster", "prod-eu-1", "-o", bound); err != nil {
		t.Fatalf("issue --cluster: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "license", "verify", "--public-key", pub, "--at", "2026-01-15", "--cluster", "prod-eu-1", bound); err != nil || !strings.Contains(out, `cluster "prod-eu-1"`) {
		t.Errorf("verify --cluster prod-eu-1: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "license", "verify", "--public-key", pub, "--at", "2026-01-15", "--cluster", "dev", bound); err == nil || !strings.Contains(err.Error(), `bound to cluster "prod-eu-1", this node is in cluster "dev"`) {
		t.Errorf("verify --cluster dev: %v, want a refusal naming both clusters", err)
	}
}
