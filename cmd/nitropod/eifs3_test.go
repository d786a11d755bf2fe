package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/nitropod/nitropod/eif/s3/s3test"
	"github.com/nitropod/nitropod/internal/testenv"
)

// runCLI runs the licence and eif push/pull commands, built fresh for each
// call so that no flag value carries over.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "nitropod", SilenceUsage: true, SilenceErrors: true}
	eifCmd := &cobra.Command{Use: "eif"}
	eifCmd.AddCommand(newEIFPushCommand(), newEIFPullCommand())
	root.AddCommand(eifCmd, newLicenseCommand())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestEIFPushPullCLI(t *testing.T) {
	testenv.Integration(t)
	srv := s3test.Start(t)
	srv.CreateBucket(t, "releases")
	// The CLI uses the default credential chain: the environment here.
	t.Setenv("AWS_ACCESS_KEY_ID", s3test.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3test.SecretKey)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	dir := t.TempDir()
	src := filepath.Join(dir, "app.eif")
	m := s3test.WriteEIF(t, src, 2<<20, 1, s3test.Signer(t))

	out, err := runCLI(t, "eif", "push", src, "s3://releases/app/v1.eif", "--endpoint", srv.Endpoint)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	var pushed transferResult
	if err := json.Unmarshal([]byte(out), &pushed); err != nil {
		t.Fatalf("push output is not JSON: %v\n%s", err, out)
	}
	if pushed.Measurements.PCR0 != m.PCR0 || !pushed.Signed || pushed.ETag == "" {
		t.Errorf("push printed %+v, want PCR0 %s, signed, an ETag", pushed, m.PCR0)
	}

	dst := filepath.Join(dir, "pulled.eif")
	out, err = runCLI(t, "eif", "pull", "s3://releases/app/v1.eif", dst, "--endpoint", srv.Endpoint,
		"--expected-pcr0", m.PCR0, "--expected-pcr8", pushed.Measurements.PCR8)
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Error("pulled file differs from the pushed one")
	}

	bad := filepath.Join(dir, "bad.eif")
	_, err = runCLI(t, "eif", "pull", "s3://releases/app/v1.eif", bad, "--endpoint", srv.Endpoint, "--expected-pcr0", strings.Repeat("0", 96))
	if err == nil || !strings.Contains(err.Error(), m.PCR0) {
		t.Errorf("pull with a wrong expected PCR0: %v, want an error naming the real PCR0", err)
	}
	if _, err := os.Stat(bad); err == nil {
		t.Error("pull with a wrong expected PCR0 left the file")
	}

	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	_, err = runCLI(t, "eif", "pull", "s3://releases/app/v1.eif", bad, "--endpoint", srv.Endpoint)
	if err == nil || !strings.Contains(err.Error(), "access key "+s3test.AccessKey) {
		t.Errorf("pull with a wrong secret: %v, want an error naming the access key", err)
	}
}
