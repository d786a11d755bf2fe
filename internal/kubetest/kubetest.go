// Package kubetest starts a real etcd and kube-apiserver on loopback for
// integration tests, with token authentication, RBAC and service-account
// keys, and gives tests a kubeconfig, a small REST client and kubectl. The
// binaries come from `make tools` (testenv.Binary); everything runs in the
// test's temporary directory and stops when the test ends. The e2e harness
// builds on it (kubelet, scheduler, …) using the Cluster's files and keys.
package kubetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/internal/testenv"
)

// AdminUser is the user of Cluster.Token (group system:masters).
const AdminUser = "kubetest-admin"

// Options change how the cluster starts.
type Options struct {
	// APIServerArgs are appended to kube-apiserver's flags (a later flag
	// wins over an earlier one of the same name).
	APIServerArgs []string
	// StartTimeout bounds the wait for both processes (default 2 minutes).
	StartTimeout time.Duration
}

// Cluster is a running etcd + kube-apiserver.
type Cluster struct {
	// Dir holds every file of the cluster: certificates, keys, the token
	// file, the kubeconfig, etcd's data and the processes' logs.
	Dir string
	// URL is kube-apiserver's base URL, https://127.0.0.1:PORT.
	URL string
	// Host and Port are URL's parts.
	Host string
	Port int
	// EtcdURL is etcd's client URL.
	EtcdURL string
	// Token is a bearer token of AdminUser (system:masters).
	Token string
	// PKI holds the CA and keys (CA.crt also verifies kube-apiserver).
	PKI *PKI
	// Kubeconfig is a kubeconfig file for AdminUser (namespace default).
	Kubeconfig string

	client *http.Client
}

// Start runs etcd and kube-apiserver and waits until the apiserver is ready,
// the default namespace exists and has a default ServiceAccount. Missing
// binaries are testenv.Missing; everything stops in t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	etcdBin := testenv.Binary(t, "etcd")
	apiBin := testenv.Binary(t, "kube-apiserver")
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.StartTimeout)
	defer cancel()

	dir := t.TempDir()
	pki, err := NewPKI(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 3)
	c := &Cluster{
		Dir:     dir,
		Host:    "127.0.0.1",
		Port:    ports[2],
		EtcdURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		Token:   randomToken(),
		PKI:     pki,
	}
	c.URL = "https://" + net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	c.client = httpClient(pki.CAPEM)
	t.Cleanup(c.client.CloseIdleConnections)

	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	startProcess(t, dir, "etcd", etcdBin,
		"--name=default",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+c.EtcdURL, "--advertise-client-urls="+c.EtcdURL,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=default="+peer,
		"--unsafe-no-fsync", "--log-level=warn")
	waitFor(t, ctx, "etcd", dir, func() bool {
		resp, err := http.Get(c.EtcdURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf("%s,%s,%s-uid,\"system:masters\"\n", c.Token, AdminUser, AdminUser)), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--etcd-servers=" + c.EtcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.Port),
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file=" + pki.ServingCertFile, "--tls-private-key-file=" + pki.ServingKeyFile,
		"--client-ca-file=" + pki.CAFile,
		"--token-auth-file=" + tokens,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.ServiceAccountPubFile,
		"--service-account-signing-key-file=" + pki.ServiceAccountKeyFile,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	startProcess(t, dir, "kube-apiserver", apiBin, append(args, opts.APIServerArgs...)...)
	waitFor(t, ctx, "kube-apiserver", dir, func() bool {
		resp, err := c.Do(ctx, http.MethodGet, "/readyz", nil)
		return err == nil && resp.Status == http.StatusOK
	})
	waitFor(t, ctx, "the default namespace", dir, func() bool {
		resp, err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/default", nil)
		return err == nil && resp.Status == http.StatusOK
	})
	if err := c.EnsureServiceAccount(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, c.kubeconfig(), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *Cluster) kubeconfig() []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: kubetest
  context: {cluster: kubetest, user: %s, namespace: default}
current-context: kubetest
`, c.URL, base64.StdEncoding.EncodeToString(c.PKI.CAPEM), AdminUser, c.Token, AdminUser))
}

// Response is an apiserver answer.
type Response struct {
	// Status is the HTTP status code.
	Status int
	// Body is the response body (JSON).
	Body []byte
	// Warnings are the texts of the Warning headers (admission warnings).
	Warnings []string
}

// Decode unmarshals the body into v.
func (r *Response) Decode(v any) error { return json.Unmarshal(r.Body, v) }

// Error returns nil for a 2xx status, else an error with the body's message.
func (r *Response) Error() error {
	if r.Status/100 == 2 {
		return nil
	}
	var st struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(r.Body, &st) == nil && st.Message != "" {
		return fmt.Errorf("status %d: %s", r.Status, st.Message)
	}
	return fmt.Errorf("status %d: %s", r.Status, bytes.TrimSpace(r.Body))
}

// Do sends a request as AdminUser. A body that is not []byte is marshalled
// as JSON; PATCH bodies are sent as JSON merge patches.
func (c *Cluster) Do(ctx context.Context, method, path string, body any) (*Response, error) {
	var rd io.Reader
	if body != nil {
		b, ok := body.([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(body); err != nil {
				return nil, fmt.Errorf("encoding request body: %w", err)
			}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		ct := "application/json"
		if method == http.MethodPatch {
			ct = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", method, path, err)
	}
	return &Response{Status: resp.StatusCode, Body: b, Warnings: warnings(resp.Header)}, nil
}

// Create POSTs obj to path and fails unless the apiserver stored it.
func (c *Cluster) Create(ctx context.Context, path string, obj any) (*Response, error) {
	resp, err := c.Do(ctx, http.MethodPost, path, obj)
	if err != nil {
		return nil, err
	}
	return resp, resp.Error()
}

// EnsureServiceAccount creates the ServiceAccount "default" in ns (there is
// no controller-manager to do it).
func (c *Cluster) EnsureServiceAccount(ctx context.Context, ns string) error {
	resp, err := c.Do(ctx, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts",
		map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default"}})
	if err != nil {
		return fmt.Errorf("creating default service account: %w", err)
	}
	if resp.Status != http.StatusConflict {
		if err := resp.Error(); err != nil {
			return fmt.Errorf("creating default service account: %w", err)
		}
	}
	return nil
}

// Kubectl runs kubectl against the cluster and returns its stdout and
// stderr; err is set when it exits non-zero.
func (c *Cluster) Kubectl(t testing.TB, ctx context.Context, stdin []byte, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := testenv.Binary(t, "kubectl")
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err = cmd.Run()
	return o.String(), e.String(), err
}

// warnings extracts the texts of RFC 7234 Warning headers
// (`299 - "text"`), as kube-apiserver sends admission warnings.
func warnings(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Warning") {
		_, rest, ok := strings.Cut(v, " - ")
		if !ok {
			out = append(out, v)
			continue
		}
		if s, err := strconv.Unquote(rest); err == nil {
			out = append(out, s)
		} else {
			out = append(out, rest)
		}
	}
	return out
}

func httpClient(caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
}

// startProcess runs a binary with its output in DIR/NAME.log; it is killed
// and reaped when the test ends, and its log tail is printed if the test
// failed.
func startProcess(t testing.TB, dir, name, bin string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			t.Logf("%s log tail:\n%s", name, tail(logPath, 40))
		}
	})
}

func waitFor(t testing.TB, ctx context.Context, what, dir string, ok func() bool) {
	t.Helper()
	for !ok() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (logs in %s)", what, ctx.Err(), dir)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}
