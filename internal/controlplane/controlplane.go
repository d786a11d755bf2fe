// Package controlplane starts a real etcd and kube-apiserver on this machine:
// token authentication (one admin in system:masters), RBAC, service-account
// keys, a CA-issued serving certificate and an admin kubeconfig. It is the
// one implementation behind the integration tests' internal/kubetest and
// the e2e/demo cluster of test/cluster; it takes paths and binaries as
// parameters, returns errors and imports no testing package.
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config says where and how the control plane runs. Zero values pick the
// defaults documented on each field.
type Config struct {
	// Dir holds the certificates and keys (Dir/pki), the token file, the
	// kubeconfig and etcd's data (Dir/etcd). Required.
	Dir string
	// LogDir receives etcd.log and kube-apiserver.log (default Dir).
	LogDir string
	// EtcdBin and APIServerBin are the binaries. Required.
	EtcdBin, APIServerBin string
	// Host is kube-apiserver's bind and advertise address (default
	// 127.0.0.1); etcd always listens on 127.0.0.1.
	Host string
	// ServiceCIDR is --service-cluster-ip-range (default 10.0.0.0/24); its
	// first address is in the serving certificate.
	ServiceCIDR string
	// AdminUser is the user of the admin token (default "admin").
	AdminUser string
	// AuthorizationMode is --authorization-mode (default "Node,RBAC").
	AuthorizationMode string
	// ServiceAccountIssuer is --service-account-issuer (default
	// https://kubernetes.default.svc.cluster.local).
	ServiceAccountIssuer string
	// ClusterName names the cluster and context in the kubeconfig
	// (default "controlplane").
	ClusterName string
	// APIServerArgs are appended to kube-apiserver's flags (a later flag
	// wins over an earlier one of the same name).
	APIServerArgs []string
	// Timeout bounds the wait for both processes (default 2 minutes).
	Timeout time.Duration
}

// ControlPlane is a running etcd + kube-apiserver.
type ControlPlane struct {
	// Dir is Config.Dir.
	Dir string
	// URL is kube-apiserver's base URL, https://HOST:PORT.
	URL string
	// Host and Port are URL's parts.
	Host string
	Port int
	// EtcdURL is etcd's client URL.
	EtcdURL string
	// AdminUser is the user of Token (group system:masters).
	AdminUser string
	// Token is a bearer token of AdminUser.
	Token string
	// PKI holds the CA and keys (PKI.CAFile also verifies kube-apiserver).
	PKI *PKI
	// Kubeconfig is a kubeconfig file for AdminUser (namespace default),
	// verifying the apiserver with the CA.
	Kubeconfig string
	// Etcd and APIServer are the two processes.
	Etcd, APIServer *Process

	client *http.Client
}

func (cfg *Config) defaults() error {
	if cfg.Dir == "" || cfg.EtcdBin == "" || cfg.APIServerBin == "" {
		return fmt.Errorf("control plane config needs Dir, EtcdBin and APIServerBin (got %q, %q, %q)", cfg.Dir, cfg.EtcdBin, cfg.APIServerBin)
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&cfg.LogDir, cfg.Dir)
	def(&cfg.Host, "127.0.0.1")
	def(&cfg.ServiceCIDR, "10.0.0.0/24")
	def(&cfg.AdminUser, "admin")
	def(&cfg.AuthorizationMode, "Node,RBAC")
	def(&cfg.ServiceAccountIssuer, "https://kubernetes.default.svc.cluster.local")
	def(&cfg.ClusterName, "controlplane")
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	return nil
}

// Start runs etcd and kube-apiserver and waits until the apiserver is ready
// and the default namespace exists. On error, whatever started is stopped;
// otherwise the caller stops both with Close.
//
// etcd and kube-apiserver cannot report a port the kernel chose, so their
// ports come from FreePorts; another process may take one before they bind
// it. Start then tries again with new ports (PortAttempts in all).
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		c, err := start(ctx, cfg)
		if err == nil || attempt == PortAttempts || !PortTaken(err) || ctx.Err() != nil {
			return c, err
		}
		// A fresh etcd member for the new peer address.
		if rerr := os.RemoveAll(filepath.Join(cfg.Dir, "etcd")); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
	}
}

// PortAttempts is how often Start tries when a port it picked was taken.
const PortAttempts = 3

// PortTaken reports whether err says that a process could not bind its
// address because another one had it (the process's log tail is part of
// WaitReady's error).
func PortTaken(err error) bool {
	return err != nil && strings.Contains(err.Error(), "address already in use")
}

// freePorts is FreePorts (tests replace it to force a port clash).
var freePorts = FreePorts

func start(ctx context.Context, cfg Config) (_ *ControlPlane, err error) {
	prefix, err := netip.ParsePrefix(cfg.ServiceCIDR)
	if err != nil {
		return nil, fmt.Errorf("parsing service CIDR %q: %w", cfg.ServiceCIDR, err)
	}
	hostIP := net.ParseIP(cfg.Host)
	if hostIP == nil {
		return nil, fmt.Errorf("apiserver host %q is not an IP address", cfg.Host)
	}
	for _, d := range []string{cfg.Dir, cfg.LogDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("creating control plane directory: %w", err)
		}
	}
	pki, err := NewPKI(filepath.Join(cfg.Dir, "pki"), hostIP, net.IP(prefix.Addr().Next().AsSlice()))
	if err != nil {
		return nil, err
	}
	etcdPorts, err := freePorts("127.0.0.1", 2)
	if err != nil {
		return nil, err
	}
	apiPort, err := freePorts(cfg.Host, 1)
	if err != nil {
		return nil, err
	}
	c := &ControlPlane{
		Dir:       cfg.Dir,
		Host:      cfg.Host,
		Port:      apiPort[0],
		EtcdURL:   fmt.Sprintf("http://127.0.0.1:%d", etcdPorts[0]),
		AdminUser: cfg.AdminUser,
		Token:     randomToken(),
		PKI:       pki,
	}
	c.URL = "https://" + net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	c.client = httpClient(pki.CAPEM)
	defer func() {
		if err != nil {
			c.Close()
		}
	}()

	peer := fmt.Sprintf("http://127.0.0.1:%d", etcdPorts[1])
	if c.Etcd, err = StartProcess(cfg.LogDir, "etcd", nil, cfg.EtcdBin,
		"--name=default",
		"--data-dir="+filepath.Join(cfg.Dir, "etcd"),
		"--listen-client-urls="+c.EtcdURL, "--advertise-client-urls="+c.EtcdURL,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=default="+peer,
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return nil, err
	}
	if err := c.Etcd.WaitReady(ctx, func() error {
		resp, err := c.client.Get(c.EtcdURL + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("etcd health: %s", resp.Status)
		}
		return nil
	}); err != nil {
		return nil, err
	}

	tokens := filepath.Join(cfg.Dir, "tokens.csv")
	line := fmt.Sprintf("%s,%s,%s-uid,\"system:masters\"\n", c.Token, c.AdminUser, c.AdminUser)
	if err := os.WriteFile(tokens, []byte(line), 0o600); err != nil {
		return nil, fmt.Errorf("writing token file: %w", err)
	}
	args := []string{
		"--etcd-servers=" + c.EtcdURL,
		"--bind-address=" + c.Host, "--advertise-address=" + c.Host,
		"--secure-port=" + strconv.Itoa(c.Port),
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(cfg.Dir, "apiserver-certs"),
		"--tls-cert-file=" + pki.ServingCertFile, "--tls-private-key-file=" + pki.ServingKeyFile,
		"--client-ca-file=" + pki.CAFile,
		"--token-auth-file=" + tokens,
		"--authorization-mode=" + cfg.AuthorizationMode,
		"--service-account-issuer=" + cfg.ServiceAccountIssuer,
		"--service-account-key-file=" + pki.ServiceAccountPubFile,
		"--service-account-signing-key-file=" + pki.ServiceAccountKeyFile,
		"--service-cluster-ip-range=" + cfg.ServiceCIDR,
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	if c.APIServer, err = StartProcess(cfg.LogDir, "kube-apiserver", nil, cfg.APIServerBin, append(args, cfg.APIServerArgs...)...); err != nil {
		return nil, err
	}
	c.Kubeconfig = filepath.Join(cfg.Dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, c.kubeconfig(cfg.ClusterName), 0o600); err != nil {
		return nil, fmt.Errorf("writing kubeconfig: %w", err)
	}
	for _, w := range []struct{ what, path string }{
		{"readyz", "/readyz"},
		{"the default namespace", "/api/v1/namespaces/default"},
	} {
		if err := c.APIServer.WaitReady(ctx, func() error {
			resp, err := c.Do(ctx, http.MethodGet, w.path, nil)
			if err != nil {
				return err
			}
			if err := resp.Error(); err != nil {
				return fmt.Errorf("%s: %w", w.what, err)
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Close stops kube-apiserver, then etcd. It may be called more than once.
func (c *ControlPlane) Close() {
	c.APIServer.Stop(10 * time.Second)
	c.Etcd.Stop(10 * time.Second)
	if c.client != nil {
		c.client.CloseIdleConnections()
	}
}

func (c *ControlPlane) kubeconfig(name string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]s
    certificate-authority-data: %[3]s
users:
- name: %[4]s
  user:
    token: %[5]s
contexts:
- name: %[1]s
  context: {cluster: %[1]s, user: %[4]s, namespace: default}
current-context: %[1]s
`, name, c.URL, base64.StdEncoding.EncodeToString(c.PKI.CAPEM), c.AdminUser, c.Token))
}

func httpClient(caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
}

// FreePorts returns n distinct TCP ports of host that were free a moment ago.
func FreePorts(host string, n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("finding a free port on %s: %w", host, err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}
