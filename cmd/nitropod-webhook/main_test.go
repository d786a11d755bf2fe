package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
)

// TestCommand runs the command as a user would: bootstrapped certificates,
// a configuration file, flags; it reviews a Pod over HTTPS and stops on
// SIGTERM.
func TestCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("defaultMemory: 1Gi\nlicenseOptional: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := newCommand()
	cmd.SetArgs([]string{
		"--listen", addr, "--config", cfg, "--log-level", "error",
		"--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-private-key-file", filepath.Join(dir, "tls.key"),
		"--bootstrap-certs", "--bootstrap-ips", "127.0.0.1", "--bootstrap-ca-file", filepath.Join(dir, "ca.crt"),
		"--runtime-class", "enclave",
	})
	done := make(chan error, 1)
	go func() { done <- cmd.Execute() }()

	var client *http.Client
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if ca, err := os.ReadFile(filepath.Join(dir, "ca.crt")); err == nil && client == nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(ca)
			client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		}
		if client != nil {
			if resp, err := client.Get("https://" + addr + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
		}
		select {
		case err := <-done:
			t.Fatalf("command exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("command did not become ready")
		}
	}

	review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"version":"v1","kind":"Pod"},` +
		`"operation":"CREATE","object":{"metadata":{"name":"p","labels":{"nitro.k8s.anjuna.io/managed":"yes"}},` +
		`"spec":{"containers":[{"name":"c","image":"x","resources":{"limits":{"cpu":"2"}}}]}}}}`
	resp, err := client.Post("https://"+addr+"/mutate-pods", "application/json", strings.NewReader(review))
	if err != nil {
		t.Fatal(err)
	}
	var out admissionv1.AdmissionReview
	err = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if err != nil || out.Response == nil {
		t.Fatalf("decoding answer: %v", err)
	}
	r := out.Response
	if !r.Allowed || len(r.Warnings) != 1 || r.Warnings[0] != `container c: no limits.memory, using the cluster default "1Gi"` {
		t.Fatalf("answer: allowed %v, warnings %q, result %+v", r.Allowed, r.Warnings, r.Result)
	}
	if !bytes.Contains(r.Patch, []byte(`"path":"/spec/runtimeClassName","value":"enclave"`)) {
		t.Errorf("patch does not set the flag's runtime class: %s", r.Patch)
	}

	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("command: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("command did not stop on SIGTERM")
	}
}

func TestCommandNeedsCertificates(t *testing.T) {
	cmd := newCommand()
	cmd.SetArgs([]string{"--listen", "127.0.0.1:0"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--tls-cert-file and --tls-private-key-file are required") {
		t.Fatalf("Execute = %v", err)
	}
}
