package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nitropod/nitropod/internal/testenv"
)

// TestStart runs the real binaries with a non-default apiserver address
// (127.0.0.2, in the serving certificate) and checks what callers rely on:
// CA-verified TLS, token auth with RBAC, the kubeconfig, and Close.
func TestStart(t *testing.T) {
	testenv.Integration(t)
	dir := t.TempDir()
	c, err := Start(context.Background(), Config{
		Dir:          dir,
		LogDir:       filepath.Join(dir, "logs"),
		EtcdBin:      testenv.Binary(t, "etcd"),
		APIServerBin: testenv.Binary(t, "kube-apiserver"),
		Host:         "127.0.0.2",
		ServiceCIDR:  "10.7.128.0/24",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if !strings.HasPrefix(c.URL, "https://127.0.0.2:") {
		t.Errorf("URL = %s; want https://127.0.0.2:PORT", c.URL)
	}
	// The serving certificate verifies against the CA for the apiserver's
	// address (no InsecureSkipVerify anywhere).
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.PKI.CAPEM)
	conn, err := tls.Dial("tcp", strings.TrimPrefix(c.URL, "https://"), &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS to the apiserver with the CA: %v", err)
	}
	conn.Close()

	if err := c.EnsureServiceAccount(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureServiceAccount(ctx, "default"); err != nil {
		t.Errorf("second EnsureServiceAccount: %v", err)
	}
	resp, err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/default/serviceaccounts/default", nil)
	if err != nil || resp.Error() != nil {
		t.Fatalf("default service account: %v %v", err, resp.Error())
	}
	bad := *c
	bad.Token = "not-a-token"
	if resp, err := bad.Do(ctx, http.MethodGet, "/api/v1/namespaces", nil); err != nil || resp.Status != http.StatusUnauthorized {
		t.Fatalf("bad token: %v %+v", err, resp)
	}
	// The kubeconfig works as is (kubectl verifies with the embedded CA).
	out, err := exec.CommandContext(ctx, testenv.Binary(t, "kubectl"), "--kubeconfig="+c.Kubeconfig,
		"auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "admin" {
		t.Errorf("kubectl auth whoami = %q, %v; want admin", out, err)
	}
	for _, f := range []string{"logs/etcd.log", "logs/kube-apiserver.log", "pki/ca.crt", "tokens.csv"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}

	c.Close()
	for _, p := range []*Process{c.APIServer, c.Etcd} {
		if done, _ := p.Exited(); !done {
			t.Errorf("%s still running after Close", p.Name)
		}
	}
	c.Close() // a second Close is harmless
}

func TestStartNeedsBinaries(t *testing.T) {
	if _, err := Start(context.Background(), Config{Dir: t.TempDir()}); err == nil {
		t.Error("Start without binaries succeeded; want an error")
	}
}

// TestWaitReadyExited checks that a process that dies is reported at once
// with its log, not after the timeout.
func TestWaitReadyExited(t *testing.T) {
	dir := t.TempDir()
	sh, err := exec.LookPath("sh")
	if err != nil {
		testenv.Missing(t, "sh")
	}
	p, err := StartProcess(dir, "dies", []string{"MSG=bye"}, sh, "-c", `echo "$MSG"; exit 3`)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	err = p.WaitReady(ctx, func() error { return errors.New("not yet") })
	if err == nil || !strings.Contains(err.Error(), "dies exited") || !strings.Contains(err.Error(), "bye") {
		t.Errorf("WaitReady = %v; want an exit error with the log's tail", err)
	}
	if time.Since(start) > 30*time.Second {
		t.Errorf("WaitReady took %s", time.Since(start))
	}
	p.Stop(time.Second) // ended: a no-op
}

func TestPoll(t *testing.T) {
	n := 0
	if err := Poll(context.Background(), time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("again")
		}
		return nil
	}); err != nil || n != 3 {
		t.Errorf("Poll = %v after %d calls; want nil after 3", err, n)
	}
	stop := errors.New("stop")
	if err := Poll(context.Background(), time.Millisecond, func() error { return Permanent(stop) }); !errors.Is(err, stop) {
		t.Errorf("Poll with a permanent error = %v; want %v", err, stop)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	last := errors.New("last")
	err := Poll(ctx, time.Millisecond, func() error { return last })
	if !errors.Is(err, last) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Poll past the deadline = %v; want it to wrap %v and the deadline", err, last)
	}
}

func TestTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(p, []byte("a\nb\nc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		n    int
		want string
	}{{1, "c"}, {2, "b\nc"}, {5, "a\nb\nc"}} {
		if diff := cmp.Diff(tc.want, Tail(p, tc.n)); diff != "" {
			t.Errorf("Tail(%d) (-want +got):\n%s", tc.n, diff)
		}
	}
	if got := Tail(filepath.Join(t.TempDir(), "none"), 3); got != "" {
		t.Errorf("Tail of a missing file = %q", got)
	}
}

func TestFreePorts(t *testing.T) {
	ports, err := FreePorts("127.0.0.1", 3)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Errorf("ports %v: want 3 distinct", ports)
		}
		seen[p] = true
	}
	if _, err := FreePorts("192.0.2.1", 1); err == nil {
		t.Error("FreePorts on an address not of this machine succeeded")
	}
}

func TestWarnings(t *testing.T) {
	h := http.Header{}
	h.Add("Warning", `299 - "container x: \"quoted\" value"`)
	h.Add("Warning", `plain`)
	if diff := cmp.Diff([]string{`container x: "quoted" value`, "plain"}, warnings(h)); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}

// TestStartRetriesTakenPort hands Start an etcd client port that another
// listener holds (as when a process takes a port between FreePorts and
// etcd's bind): Start must try again with new ports and succeed.
func TestStartRetriesTakenPort(t *testing.T) {
	testenv.Integration(t)
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	calls := 0
	freePorts = func(host string, n int) ([]int, error) {
		calls++
		ports, err := FreePorts(host, n)
		if err == nil && calls == 1 {
			ports[0] = held.Addr().(*net.TCPAddr).Port
		}
		return ports, err
	}
	t.Cleanup(func() { freePorts = FreePorts })
	dir := t.TempDir()
	c, err := Start(context.Background(), Config{
		Dir:          dir,
		LogDir:       filepath.Join(dir, "logs"),
		EtcdBin:      testenv.Binary(t, "etcd"),
		APIServerBin: testenv.Binary(t, "kube-apiserver"),
		Host:         "127.0.0.1",
		ServiceCIDR:  "10.7.128.0/24",
	})
	if err != nil {
		t.Fatalf("Start with a taken etcd port: %v", err)
	}
	c.Close()
	if calls < 3 {
		t.Errorf("Start asked for ports %d times; want a second attempt (etcd and apiserver ports twice)", calls)
	}
	if !strings.Contains(Tail(filepath.Join(dir, "logs", "etcd.log"), 200), "address already in use") {
		t.Errorf("etcd's log does not show the taken port; the test did not force a clash")
	}
}
