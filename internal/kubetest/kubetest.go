// Package kubetest starts a real etcd and kube-apiserver on loopback for
// integration tests (internal/controlplane, with token authentication, RBAC
// and service-account keys), and gives tests a kubeconfig, a small REST
// client and kubectl. The binaries come from `make tools` (testenv.Binary);
// everything runs in the test's temporary directory and stops when the test
// ends.
package kubetest

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nitropod/nitropod/internal/controlplane"
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

// Cluster is a running etcd + kube-apiserver; see controlplane.ControlPlane
// for its fields (URL, Token, PKI, Kubeconfig, …) and REST methods (Do,
// Create, EnsureServiceAccount).
type Cluster struct {
	controlplane.ControlPlane
}

// Response is an apiserver answer.
type Response = controlplane.Response

// PKI is the cluster's CA and keys.
type PKI = controlplane.PKI

// NewPKI makes a CA, a serving certificate for 127.0.0.1 and the
// service-account keys in dir.
func NewPKI(dir string) (*PKI, error) { return controlplane.NewPKI(dir) }

// Start runs etcd and kube-apiserver and waits until the apiserver is ready,
// the default namespace exists and has a default ServiceAccount. Missing
// binaries are testenv.Missing; everything stops in t.Cleanup, which also
// prints the logs' tails if the test failed.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	dir := t.TempDir()
	cp, err := controlplane.Start(context.Background(), controlplane.Config{
		Dir:           dir,
		EtcdBin:       testenv.Binary(t, "etcd"),
		APIServerBin:  testenv.Binary(t, "kube-apiserver"),
		AdminUser:     AdminUser,
		ClusterName:   "kubetest",
		APIServerArgs: opts.APIServerArgs,
		Timeout:       opts.StartTimeout,
	})
	if err != nil {
		for _, name := range []string{"etcd", "kube-apiserver"} {
			t.Logf("%s log tail:\n%s", name, controlplane.Tail(filepath.Join(dir, name+".log"), 40))
		}
		t.Fatalf("starting control plane: %v", err)
	}
	t.Cleanup(func() {
		cp.Close()
		if t.Failed() {
			for _, p := range []*controlplane.Process{cp.Etcd, cp.APIServer} {
				t.Logf("%s log tail:\n%s", p.Name, controlplane.Tail(p.Log, 40))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cp.EnsureServiceAccount(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	return &Cluster{ControlPlane: *cp}
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
