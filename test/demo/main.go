// Command demo is `make demo`: a local one-node cluster to try workloads in
// emulated Nitro Enclaves. It starts the complete cluster of the e2e tier
// (package test/cluster: kube-apiserver, kube-scheduler,
// kube-controller-manager, containerd with the nitro runtime, kubelet) and
// installs nitropod from the Helm chart as on a real cluster: the webhook
// Deployment and the device plugin DaemonSet (over a FAKE enclave pool, as
// there is no Nitro hardware here). It then applies a YAML file of any number
// of documents (by default the Anjuna document's nginx Pod, verbatim), shows
// each enclave Pod's progress (building its EIF, booting, Ready) until every
// workload of the file is Ready, forwards a local port to a Pod or Service
// port and prints how to use the cluster from another shell. Everything
// stops on Ctrl-C.
//
// Services: the cluster has no service proxy (kube-proxy is not built), so
// ClusterIP addresses do not route; forwarding to a Service picks a Ready
// Pod of it (from its EndpointSlices) for each connection.
//
// Cluster DNS is not installed: Pods get kubelet's MissingClusterDNS warning
// and resolve names with the node's resolver only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/test/cluster"
	"github.com/nitropod/nitropod/test/images"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) { fmt.Printf("demo: "+format+"\n", args...) }

func run() error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	out := os.Getenv("NITROPOD_OUTPUT")
	if out == "" {
		out = filepath.Join(root, "_output")
	}
	file := flag.String("f", filepath.Join(root, "test", "e2e", "testdata", "nginx-pod.yaml"),
		"YAML file to apply (one or more documents: Pods, Deployments, Services, ConfigMaps, Secrets, Jobs, …)")
	port := flag.Int("port", 8080, "local port (on 127.0.0.1) forwarded to the -forward target")
	fwd := flag.String("forward", "", "what the local port forwards to: pod/NAME:PORT or service/NAME:PORT, NAMESPACE/ before NAME for another namespace (default: the file's first Service, else its first Pod, at the first port)")
	dir := flag.String("dir", "", "cluster directory, emptied at start and removed at exit (default: OUTPUT/demo; the kubeconfig is DIR/kubeconfig)")
	pool := flag.String("pool", "1,5,2,6", "FAKE enclave CPU pool of the node (cpu-list of an 8-CPU node, 2 threads per core; enclaves take whole cores, 2 vCPUs each)")
	memory := flag.Int("memory", 4096, "FAKE enclave memory of the node in MiB (2 MiB hugepages)")
	timeout := flag.Duration("timeout", 20*time.Minute, "how long to wait for the file's workloads to be Ready")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (the file is given with -f)", flag.Args())
	}
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root (network namespace, containerd, kubelet): run it as root")
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		return fmt.Errorf("reading -f %s: %w", *file, err)
	}
	objs, err := parseObjects(data)
	if err != nil {
		return fmt.Errorf("-f %s: %w", *file, err)
	}
	target, err := defaultTarget(*fwd, objs)
	if err != nil {
		return err
	}
	if *dir == "" {
		*dir = filepath.Join(out, "demo")
	}
	if *dir, err = filepath.Abs(*dir); err != nil {
		return err
	}
	// One demo per directory: the lock is held until the process ends, so
	// the directory of a running demo is never emptied by a second one.
	unlock, err := lockFile(*dir + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	cluster.UnmountUnder(*dir)
	if err := os.RemoveAll(*dir); err != nil {
		return fmt.Errorf("emptying the demo directory %s: %w", *dir, err)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	defer func() {
		cluster.UnmountUnder(*dir)
		_ = os.RemoveAll(*dir)
	}()
	runDir, err := os.MkdirTemp("/run", "npdemo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(runDir)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bin := func(n string) (string, error) {
		for _, d := range []string{filepath.Join(out, "tools", "bin"), filepath.Join(out, "bin")} {
			if p := filepath.Join(d, n); isExec(p) {
				return p, nil
			}
		}
		p, err := exec.LookPath(n)
		if err != nil {
			return "", fmt.Errorf("%s not found in %s/{tools/bin,bin} or PATH: run make deps tools emu-kernel build", n, out)
		}
		return p, nil
	}
	shim, err := bin(nitropod.ShimBinary)
	if err != nil {
		return err
	}
	binDir := filepath.Dir(shim)
	blobs := filepath.Join(out, "blobs", "emu")
	if !isFile(filepath.Join(blobs, "bzImage")) {
		return fmt.Errorf("no emulation blob set in %s: run make emu-kernel", blobs)
	}
	// The demo node enforces licences like a production node: it trusts
	// an issuer key made for this run, which signs the Pods' licence.
	nitropodCLI, err := bin("nitropod")
	if err != nil {
		return err
	}
	keyDir := filepath.Join(*dir, "license")
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return err
	}
	issuer, err := cluster.NewIssuer(ctx, nitropodCLI, keyDir)
	if err != nil {
		return err
	}
	shimCfg := filepath.Join(*dir, "nitropod", "shim.toml")
	if err := cluster.ShimConfig(shimCfg, binDir, blobs, filepath.Join(out, "cache", "eif"), runDir, issuer.PublicKey, cluster.PodResourcesSocket(*dir)); err != nil {
		return err
	}
	start := time.Now()
	c, err := cluster.New(ctx, cluster.Options{
		Dir:               *dir,
		Bin:               bin,
		ContainerdDropIn:  filepath.Join(root, "deploy", "helm", "nitropod", "files", "containerd-nitro.toml"),
		ShimPath:          shim,
		ExtraPath:         binDir,
		ShimConfig:        shimCfg,
		ControllerManager: true,
		Log:               logf,
	})
	if err != nil {
		return err
	}
	defer func() {
		logf("stopping the cluster")
		c.Close()
	}()
	logf("building nginx:latest (Debian's nginx), busybox:latest and pause images into the local registry")
	if err := images.PushAll(c.Registry, strings.TrimPrefix(cluster.PauseImage, "registry.k8s.io/"),
		filepath.Join(out, "cache", "debs"), filepath.Join(*dir, "images")); err != nil {
		return err
	}
	logf("installing nitropod from the chart: webhook Deployment, device plugin DaemonSet (FAKE enclave pool %s)", *pool)
	if err := c.InstallNitropod(ctx, cluster.NitropodOptions{
		Chart:     filepath.Join(root, "deploy", "helm", "nitropod"),
		InCluster: true,
		BinDir:    binDir,
		FakePool:  *pool,
		MemoryMiB: *memory,
	}); err != nil {
		return err
	}
	logf("cluster with nitropod up in %.0fs", time.Since(start).Seconds())

	lic := filepath.Join(keyDir, "anjuna-license.yaml")
	if err := issuer.Issue(ctx, lic, "nitropod demo", time.Time{}, time.Now().Add(30*24*time.Hour)); err != nil {
		return err
	}
	secret := func(ns string) error {
		_, err := c.Kubectl(ctx, "", "-n", ns, "create", "secret", "generic", nitropod.LicenseSecretName,
			"--from-file="+nitropod.LicenseSecretKey+"="+lic)
		if err != nil && strings.Contains(err.Error(), "AlreadyExists") {
			return nil
		}
		return err
	}
	if err := secret("default"); err != nil {
		return err
	}
	logf("kubectl apply -f %s (%s)", *file, describe(objs))
	applied := time.Now()
	if _, err := c.Kubectl(ctx, string(data), "apply", "-f", "-"); err != nil {
		return err
	}
	// The licence Secret in every other namespace of the file (Pods wait
	// for a Secret volume until it exists).
	for _, ns := range namespaces(objs) {
		if ns != "default" {
			if err := secret(ns); err != nil {
				return err
			}
		}
	}
	w := &watcher{c: c, objs: objs, applied: applied, containerdLog: filepath.Join(*dir, "logs", "containerd.log"), bin: bin}
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	err = w.wait(wctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			logf("interrupted")
			return nil
		}
		return err
	}
	logf("every workload of %s Ready %.0fs after kubectl apply", filepath.Base(*file), time.Since(applied).Seconds())

	kubectl, _ := bin("kubectl")
	curl := "  (nothing forwarded: the file has no Service or Pod; pass -forward pod/NAME:PORT or service/NAME:PORT)\n"
	if target.kind != "" {
		f := &forwarder{c: c, target: target}
		addr, err := f.resolve(ctx)
		if err != nil {
			return err
		}
		if err := waitDial(ctx, addr, 3*time.Minute); err != nil {
			return err
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
		if err != nil {
			return fmt.Errorf("listening on 127.0.0.1:%d (pass -port): %w", *port, err)
		}
		defer l.Close()
		go f.serve(ctx, l)
		via := "the Pod"
		if target.kind == "service" {
			via = "a Ready Pod of the Service, per connection: there is no kube-proxy here, ClusterIPs do not route"
		}
		curl = fmt.Sprintf("  curl http://127.0.0.1:%d/          # forwarded to %s (%s)\n", *port, target, via)
	}
	fmt.Printf(`
nitropod demo: ready. %s: enclave Pods run in emulated Nitro Enclaves.

%s
From another shell (as root), while the demo runs:

  export KUBECONFIG=%s
  export PATH=%s:$PATH
  kubectl get pods -o wide
  kubectl apply -f YOUR.yaml   # enclave Pods: label %s: "yes", limits cpu (even) and memory
  kubectl logs POD

Press Ctrl-C to stop the enclaves and the cluster.
`, describe(objs), curl, c.Kubeconfig, filepath.Dir(kubectl), nitropod.ManagedLabel)
	<-ctx.Done()
	return nil
}

// waitDial waits until addr accepts a TCP connection.
func waitDial(ctx context.Context, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		var conn net.Conn
		if conn, err = net.DialTimeout("tcp", addr, 3*time.Second); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not accept connections: %w", addr, err)
		case <-time.After(time.Second):
		}
	}
}

// forward copies conn to and from target.
func forward(conn net.Conn, target string) {
	defer conn.Close()
	up, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, conn); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
	<-done
}

// lockFile takes an exclusive flock on path without waiting.
func lockFile(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another demo runs with this directory (it holds %s): stop it, or pass another -dir", path)
	}
	return func() { f.Close() }, nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if isFile(filepath.Join(d, "names.go")) && isFile(filepath.Join(d, "go.mod")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("run the demo from the nitropod repository (no go.mod with names.go above %s)", dir)
		}
	}
}

func isFile(p string) bool { fi, err := os.Stat(p); return err == nil && !fi.IsDir() }
func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
