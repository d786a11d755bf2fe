// Command demo is `make demo`: it starts the local one-node cluster of
// package test/cluster with nitropod installed, applies a Pod spec (by
// default the Anjuna document's nginx example, verbatim) and, once the Pod
// is Ready in its emulated enclave, forwards a local port to POD_IP:80 and
// prints how to reach it. Everything stops on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"

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

func run() error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	out := os.Getenv("NITROPOD_OUTPUT")
	if out == "" {
		out = filepath.Join(root, "_output")
	}
	podFile := flag.String("f", filepath.Join(root, "test", "e2e", "testdata", "nginx-pod.yaml"), "Pod spec to apply")
	port := flag.Int("port", 8080, "local port forwarded to the Pod's port 80 (127.0.0.1)")
	keep := flag.String("dir", "", "cluster directory (default: a new temporary directory, removed at exit)")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root (network namespace, containerd, kubelet): run it as root")
	}
	pod, err := os.ReadFile(*podFile)
	if err != nil {
		return fmt.Errorf("reading the Pod spec: %w", err)
	}
	name, err := podName(pod)
	if err != nil {
		return err
	}
	dir := *keep
	if dir == "" {
		if dir, err = os.MkdirTemp("", "nitropod-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	runDir, err := os.MkdirTemp("/run", "npdemo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(runDir)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) { fmt.Printf("demo: "+format+"\n", args...) }
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
	blobs := filepath.Join(out, "blobs", "emu")
	if !isFile(filepath.Join(blobs, "bzImage")) {
		return fmt.Errorf("no emulation blob set in %s: run make emu-kernel", blobs)
	}
	// The demo node enforces licences like a production node: it trusts
	// an issuer key made for this run, which signs the Pod's licence.
	nitropodCLI, err := bin("nitropod")
	if err != nil {
		return err
	}
	keyDir, err := os.MkdirTemp(dir, "license-")
	if err != nil {
		return err
	}
	issuer, err := cluster.NewIssuer(ctx, nitropodCLI, keyDir)
	if err != nil {
		return err
	}
	shimCfg := filepath.Join(dir, "nitropod", "shim.toml")
	if err := cluster.ShimConfig(shimCfg, filepath.Dir(shim), blobs, filepath.Join(out, "cache", "eif"), runDir, issuer.PublicKey, cluster.PodResourcesSocket(dir)); err != nil {
		return err
	}
	start := time.Now()
	c, err := cluster.New(ctx, cluster.Options{
		Dir:              dir,
		Bin:              bin,
		ContainerdDropIn: filepath.Join(root, "deploy", "helm", "nitropod", "files", "containerd-nitro.toml"),
		ShimPath:         shim,
		ExtraPath:        filepath.Dir(shim),
		ShimConfig:       shimCfg,
		Log:              logf,
	})
	if err != nil {
		return err
	}
	defer func() {
		logf("stopping the cluster")
		c.Close()
	}()
	logf("building nginx:latest (Debian's nginx), busybox and pause images into the local registry")
	if err := images.PushAll(c.Registry, strings.TrimPrefix(cluster.PauseImage, "registry.k8s.io/"),
		filepath.Join(out, "cache", "debs"), filepath.Join(dir, "images")); err != nil {
		return err
	}
	if err := c.InstallNitropod(ctx, cluster.NitropodOptions{Chart: filepath.Join(root, "deploy", "helm", "nitropod")}); err != nil {
		return err
	}
	logf("cluster with nitropod up in %.0fs", time.Since(start).Seconds())

	lic := filepath.Join(keyDir, "anjuna-license.yaml")
	if err := issuer.Issue(ctx, lic, "nitropod demo", time.Time{}, time.Now().Add(30*24*time.Hour)); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "", "create", "secret", "generic", nitropod.LicenseSecretName,
		"--from-file="+nitropod.LicenseSecretKey+"="+lic); err != nil {
		return err
	}
	logf("kubectl apply -f %s", *podFile)
	applied := time.Now()
	if _, err := c.Kubectl(ctx, string(pod), "apply", "-f", "-"); err != nil {
		return err
	}
	logf("waiting for Pod %s: the first run builds its EIF and boots an emulated enclave (QEMU, TCG), a few minutes on 2 cores", name)
	ip, err := waitReady(ctx, c, name)
	if err != nil {
		return err
	}
	logf("Pod %s Ready in %.0fs, Pod IP %s; waiting for the enclave to answer on port 80", name, time.Since(applied).Seconds(), ip)
	title, err := waitPage(ctx, "http://"+net.JoinHostPort(ip, "80")+"/")
	if err != nil {
		return err
	}
	logf("%s answered %q %.0fs after kubectl apply", name, title, time.Since(applied).Seconds())

	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		return fmt.Errorf("listening on 127.0.0.1:%d (pass -port): %w", *port, err)
	}
	defer l.Close()
	go forward(l, net.JoinHostPort(ip, "80"))

	kubectl, _ := bin("kubectl")
	fmt.Printf(`
nitropod demo: the Pod %[1]s runs in an emulated Nitro Enclave.

  curl http://127.0.0.1:%[2]d/          # forwarded to the Pod, port 80
  curl http://%[3]s:80/          # the Pod IP, on the node's bridge
  %[4]s --kubeconfig %[5]s get pod %[1]s -o wide
  %[4]s --kubeconfig %[5]s logs %[1]s

Press Ctrl-C to stop the enclave and the cluster.
`, name, *port, ip, kubectl, c.Kubeconfig)
	<-ctx.Done()
	dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, _ = c.Kubectl(dctx, "", "delete", "pod", name, "--wait=true", "--timeout=90s")
	return nil
}

func waitReady(ctx context.Context, c *cluster.Cluster, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	last := ""
	for {
		out, err := c.Kubectl(ctx, "", "get", "pod", name, "-o",
			`jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.podIP} {.status.phase}`)
		f := strings.Fields(out)
		if err == nil && len(f) == 3 && f[0] == "True" {
			return f[1], nil
		}
		if s := strings.TrimSpace(out); s != last && s != "" {
			fmt.Printf("demo: pod %s: %s\n", name, s)
			last = s
		}
		select {
		case <-ctx.Done():
			desc, _ := c.Kubectl(context.Background(), "", "describe", "pod", name)
			return "", fmt.Errorf("pod %s not Ready: %w\n%s", name, ctx.Err(), desc)
		case <-time.After(2 * time.Second):
		}
	}
}

// waitPage polls url until it answers 200 and returns the page's <title>.
func waitPage(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				title := string(body)
				if i := strings.Index(title, "<title>"); i >= 0 {
					title = title[i+len("<title>"):]
					if j := strings.Index(title, "</title>"); j >= 0 {
						title = title[:j]
					}
				} else if len(title) > 60 {
					title = title[:60]
				}
				return title, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s did not answer: %w (last error %w)", url, ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

// forward copies each local connection to target.
func forward(l net.Listener, target string) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
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
		}()
	}
}

func podName(spec []byte) (string, error) {
	var p struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(spec, &p); err != nil {
		return "", fmt.Errorf("parsing the Pod spec: %w", err)
	}
	if p.Kind != "Pod" || p.Metadata.Name == "" {
		return "", fmt.Errorf("the spec is a %q named %q: want one Pod with metadata.name", p.Kind, p.Metadata.Name)
	}
	return p.Metadata.Name, nil
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
