// Package cluster brings up a real one-node Kubernetes cluster on this
// machine for nitropod's end-to-end tests and demo: etcd, kube-apiserver,
// kube-scheduler, and a node in its own network namespace running Debian's
// containerd (with the nitro runtime configured from deploy/'s runtime lines) and
// kubelet, a CNI bridge for Pods, and a real OCI registry that containerd
// uses as its mirror for docker.io and registry.k8s.io.
//
// Everything lives under one directory and listens on loopback or on
// addresses of the namespace and bridge the cluster made; Close stops every
// process it started and removes the network it created.
package cluster

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nitropod/nitropod/internal/controlplane"
)

// Options configures a cluster. Zero values pick defaults.
type Options struct {
	// Dir holds every file of the cluster (data, configs, logs).
	Dir string
	// Bin finds an executable by name (e.g. testenv.Binary or exec.LookPath).
	Bin func(name string) (string, error)
	// Subnet is the second octet of 10.X.0.0/16 used for the node link
	// (10.X.0.0/30) and the Pod bridge (10.X.1.0/24). Default 213.
	Subnet int
	// ContainerdDropIn is deploy/'s nitro runtime lines (containerd-nitro.toml; its
	// runtime_path and ConfigPath are rewritten to ShimPath and ShimConfig).
	ContainerdDropIn string
	// ShimPath is the containerd-shim-nitro-v1 binary; empty leaves the
	// nitro runtime out of containerd's config.
	ShimPath string
	// ShimConfig is the shim's configuration file.
	ShimConfig string
	// ExtraPath is prepended to containerd's PATH (shim helpers, qemu).
	ExtraPath string
	// ControllerManager runs kube-controller-manager too (Deployments,
	// DaemonSets, EndpointSlices; needed to run nitropod's components as
	// Pods from deploy/).
	ControllerManager bool
	// Log receives progress lines.
	Log func(format string, args ...any)
}

// Cluster is a running cluster.
type Cluster struct {
	opts Options
	// Kubeconfig is the admin kubeconfig (token auth, system:masters).
	Kubeconfig string
	// APIServer is the https URL of kube-apiserver.
	APIServer string
	// HostIP is the host end of the node link; NodeIP the node's address.
	HostIP, NodeIP string
	// NodeName is the registered Node.
	NodeName string
	// Netns is the node's network namespace (a name under /run/netns).
	Netns string
	// Registry is host:port of the OCI registry (plain HTTP).
	Registry string
	// PodSubnet is the CNI bridge's subnet.
	PodSubnet string
	// ContainerdSock is containerd's socket.
	ContainerdSock string
	// DevicePlugin is the nitropod-device-plugin process (InstallNitropod).
	DevicePlugin *Proc
	// KubeletRoot is kubelet's --root-dir.
	KubeletRoot string
	// DevicePluginDir is where device plugins register: kubelet uses the
	// fixed /var/lib/kubelet/device-plugins whatever its root directory, so
	// one cluster at a time runs on a machine.
	DevicePluginDir string

	cp         *controlplane.ControlPlane
	hostIf     string
	bridge     string
	mu         sync.Mutex
	procs      []*Proc
	kubelet    *Proc
	containerd *Proc
	cleanup    []func()
	// unlock releases MachineLock (last thing Close does).
	unlock func()
}

// Proc is a process the cluster started; its output goes to
// Dir/logs/NAME.log.
type Proc = controlplane.Process

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Log != nil {
		c.opts.Log(format, args...)
	}
}

// Start starts a process in the host network namespace (or in the node's
// when inNode), with its output in Dir/logs/NAME.log.
func (c *Cluster) Start(name string, inNode bool, env []string, bin string, args ...string) (*Proc, error) {
	if inNode {
		// nsenter switches only the network namespace: the node's processes
		// share the host's mounts, so kubelet's volume mounts are visible to
		// containerd.
		args = append([]string{"--net=/run/netns/" + c.Netns, "--", bin}, args...)
		bin = "nsenter"
	}
	p, err := controlplane.StartProcess(filepath.Join(c.opts.Dir, "logs"), name, env, bin, args...)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// New starts a cluster and waits until its node is Ready. On error,
// everything started so far is stopped.
func New(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.Subnet == 0 {
		opts.Subnet = 213
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	// One cluster per machine: kubelet's device-plugin directory, the
	// node's namespace and addresses are machine-wide. A second cluster
	// refuses to start instead of taking the first one's files over.
	unlock, err := lockMachine()
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, NodeName: "nitropod-e2e", unlock: unlock}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	for _, d := range []string{"logs", "containerd", "cni/net.d", "cni/ipam", "kubelet", "registry"} {
		if err := os.MkdirAll(filepath.Join(opts.Dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("creating cluster directory: %w", err)
		}
	}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"node network", c.startNetwork},
		{"etcd and kube-apiserver", c.startControlPlane},
		{"kube-scheduler", c.startScheduler},
		{"kube-controller-manager", c.startControllerManager},
		{"registry", c.startRegistry},
		{"containerd", c.startContainerd},
		{"kubelet", c.StartKubelet},
		{"node ready", c.waitNodeReady},
	}
	for _, s := range steps {
		if s.name == "kube-controller-manager" && !opts.ControllerManager {
			continue
		}
		start := time.Now()
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", s.name, err)
		}
		c.logf("cluster: %s up in %.1fs", s.name, time.Since(start).Seconds())
	}
	return c, nil
}

// Close stops every process (kubelet first, then containerd and its shims,
// then kube-scheduler and the rest, then kube-apiserver and etcd) and removes the network namespace, link and routes.
func (c *Cluster) Close() {
	c.mu.Lock()
	procs := append([]*Proc(nil), c.procs...)
	c.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		if procs[i].Name == "containerd" {
			c.stopPods()
		}
		procs[i].Stop(10 * time.Second)
	}
	if c.cp != nil {
		c.cp.Close()
	}
	for i := len(c.cleanup) - 1; i >= 0; i-- {
		c.cleanup[i]()
	}
	c.cleanup = nil
	UnmountUnder(c.opts.Dir)
	if c.DevicePluginDir != "" {
		// kubelet's files in the machine-wide device-plugin directory.
		_ = os.Remove(filepath.Join(c.DevicePluginDir, "kubelet_internal_checkpoint"))
		_ = os.Remove(pluginapi.KubeletSocket)
	}
	if c.unlock != nil {
		c.unlock()
		c.unlock = nil
	}
}

// MachineLock is the file a running cluster holds an exclusive flock on.
// (Not in kubelet's device-plugin directory: kubelet empties that directory
// when it starts.)
var MachineLock = "/run/nitropod-test-cluster.lock"

// lockMachine takes MachineLock without waiting; the returned func
// releases it. The kernel drops the lock when the process dies, so a
// crashed run leaves nothing stale behind.
func lockMachine() (func(), error) {
	f, err := os.OpenFile(MachineLock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the test cluster lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another test cluster runs on this machine (it holds %s); clusters share kubelet's %s, so run one at a time", MachineLock, pluginapi.DevicePluginPath)
		}
		return nil, fmt.Errorf("locking %s: %w", MachineLock, err)
	}
	return func() { f.Close() }, nil
}

// UnmountUnder detaches every mount at or below dir (kubelet bind-mounts its
// root directory and mounts Pod volumes; containerd mounts rootfs
// snapshots), deepest first, so dir can be removed.
func UnmountUnder(dir string) {
	if dir == "" {
		return
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	dir = filepath.Clean(dir)
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, mp := range points {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// stopPods removes every pod sandbox through CRI, so the shims (and any
// enclave) end before containerd does.
func (c *Cluster) stopPods() {
	crictl, err := c.bin("crictl")
	if err != nil || c.ContainerdSock == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ep := "unix://" + c.ContainerdSock
	out, err := exec.CommandContext(ctx, crictl, "-r", ep, "pods", "-q").Output()
	if err != nil {
		return
	}
	for _, id := range strings.Fields(string(out)) {
		_ = exec.CommandContext(ctx, crictl, "-r", ep, "stopp", id).Run()
		_ = exec.CommandContext(ctx, crictl, "-r", ep, "rmp", "-f", id).Run()
	}
}

func (c *Cluster) bin(name string) (string, error) {
	if c.opts.Bin != nil {
		return c.opts.Bin(name)
	}
	return exec.LookPath(name)
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startNetwork makes the node's network namespace, a veth link to it
// (10.X.0.1 host, 10.X.0.2 node) and a host route to the Pod subnet through
// the node. Forwarding is enabled only inside the node's namespace.
func (c *Cluster) startNetwork(ctx context.Context) error {
	id := randomHex(3)
	c.Netns = "npe2e-" + id
	c.hostIf, c.bridge = "npe2e"+id, "npbr"+id
	nodeIf := "npn" + id
	c.HostIP = fmt.Sprintf("10.%d.0.1", c.opts.Subnet)
	c.NodeIP = fmt.Sprintf("10.%d.0.2", c.opts.Subnet)
	c.PodSubnet = fmt.Sprintf("10.%d.1.0/24", c.opts.Subnet)
	if out, _ := exec.Command("ip", "-4", "addr", "show").Output(); bytes.Contains(out, []byte(" "+c.HostIP+"/")) {
		return fmt.Errorf("address %s is already in use on this machine (another e2e cluster running?); choose another Options.Subnet", c.HostIP)
	}
	if err := run(ctx, "ip", "netns", "add", c.Netns); err != nil {
		return err
	}
	c.cleanup = append(c.cleanup, func() { _ = run(context.Background(), "ip", "netns", "delete", c.Netns) })
	if err := run(ctx, "ip", "link", "add", c.hostIf, "type", "veth", "peer", "name", nodeIf); err != nil {
		return err
	}
	c.cleanup = append(c.cleanup, func() { _ = run(context.Background(), "ip", "link", "delete", c.hostIf) })
	in := func(args ...string) error {
		return run(ctx, "ip", append([]string{"netns", "exec", c.Netns}, args...)...)
	}
	for _, step := range [][]string{
		{"ip", "link", "set", nodeIf, "netns", c.Netns},
		{"ip", "addr", "add", c.HostIP + "/30", "dev", c.hostIf},
		{"ip", "link", "set", c.hostIf, "up"},
	} {
		if err := run(ctx, step[0], step[1:]...); err != nil {
			return err
		}
	}
	for _, step := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "add", c.NodeIP + "/30", "dev", nodeIf},
		{"ip", "link", "set", nodeIf, "up"},
		{"ip", "route", "add", "default", "via", c.HostIP},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		if err := in(step...); err != nil {
			return err
		}
	}
	if err := run(ctx, "ip", "route", "add", c.PodSubnet, "via", c.NodeIP); err != nil {
		return err
	}
	return nil
}

// freePort returns a TCP port that is free on host now.
func freePort(host string) (int, error) {
	ports, err := controlplane.FreePorts(host, 1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// waitFor polls fn every interval until it returns nil, ctx ends or the
// timeout passes; the last error is returned.
func waitFor(ctx context.Context, timeout, interval time.Duration, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return timedOut(ctx, timeout, controlplane.Poll(ctx, interval, fn))
}

// waitProc waits until ready returns nil; it fails at once if p exits
// (with its log's tail) or with ready's last error after timeout.
func (c *Cluster) waitProc(ctx context.Context, p *Proc, timeout time.Duration, ready func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return timedOut(ctx, timeout, p.WaitReady(ctx, ready))
}

func timedOut(ctx context.Context, timeout time.Duration, err error) error {
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	return err
}

func writeFile(path, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// startControlPlane runs etcd and kube-apiserver (internal/controlplane)
// with the apiserver on the host end of the node link, reachable from the
// node, and an admin token.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	etcd, err := c.bin("etcd")
	if err != nil {
		return err
	}
	api, err := c.bin("kube-apiserver")
	if err != nil {
		return err
	}
	c.cp, err = controlplane.Start(ctx, controlplane.Config{
		Dir:                  c.opts.Dir,
		LogDir:               filepath.Join(c.opts.Dir, "logs"),
		EtcdBin:              etcd,
		APIServerBin:         api,
		Host:                 c.HostIP,
		ServiceCIDR:          fmt.Sprintf("10.%d.128.0/24", c.opts.Subnet),
		AdminUser:            "admin",
		AuthorizationMode:    "RBAC",
		ServiceAccountIssuer: "https://kubernetes.default.svc",
		ClusterName:          "e2e",
		APIServerArgs: []string{
			"--kubelet-preferred-address-types=InternalIP",
			// Webhook Services resolve to their endpoints (no kube-proxy).
			"--enable-aggregator-routing=true",
			"--v=1",
		},
		Timeout: 150 * time.Second,
	})
	if err != nil {
		return err
	}
	c.APIServer, c.Kubeconfig = c.cp.URL, c.cp.Kubeconfig
	return waitFor(ctx, 30*time.Second, time.Second, func() error { return c.PrepareNamespace(ctx, "default") })
}

// PrepareNamespace creates ns (if needed) with what kube-controller-manager
// would add and Pods need: the default ServiceAccount and the
// kube-root-ca.crt ConfigMap of the service-account token volume.
func (c *Cluster) PrepareNamespace(ctx context.Context, ns string) error {
	exists := func(err error) error {
		if err != nil && (strings.Contains(err.Error(), "AlreadyExists") || strings.Contains(err.Error(), "already exists")) {
			return nil
		}
		return err
	}
	if ns != "default" {
		if err := exists(func() error { _, err := c.Kubectl(ctx, "", "create", "namespace", ns); return err }()); err != nil {
			return err
		}
	}
	if _, err := c.Kubectl(ctx, "", "create", "serviceaccount", "default", "-n", ns); exists(err) != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "", "create", "configmap", "kube-root-ca.crt", "-n", ns, "--from-file=ca.crt="+c.cp.PKI.CAFile); exists(err) != nil {
		return err
	}
	return nil
}

// Kubectl runs kubectl against the cluster with stdin (if not empty) and
// returns its stdout; the error carries stderr.
func (c *Cluster) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	bin, err := c.bin("kubectl")
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (c *Cluster) startScheduler(ctx context.Context) error {
	return c.startComponent(ctx, "kube-scheduler", "--v=2")
}

// startControllerManager runs kube-controller-manager when asked for.
func (c *Cluster) startControllerManager(ctx context.Context) error {
	if !c.opts.ControllerManager {
		return nil
	}
	return c.startComponent(ctx, "kube-controller-manager",
		"--service-account-private-key-file="+c.cp.PKI.ServiceAccountKeyFile,
		"--root-ca-file="+c.cp.PKI.CAFile,
		"--use-service-account-credentials=false",
		"--allocate-node-cidrs=false", "--v=1")
}

// startComponent runs a control-plane component (kube-scheduler,
// kube-controller-manager) as the admin, without leader election, serving
// /healthz on a free loopback port, and waits until it is healthy.
func (c *Cluster) startComponent(ctx context.Context, name string, args ...string) error {
	return retryTakenPort(func() error { return c.startComponentOnce(ctx, name, args...) })
}

// retryTakenPort runs start again (up to controlplane.PortAttempts times)
// while it fails because the port it picked was taken before its process
// could bind it (the programs cannot report a port the kernel chose).
func retryTakenPort(start func() error) error {
	for attempt := 1; ; attempt++ {
		err := start()
		if err == nil || attempt == controlplane.PortAttempts || !controlplane.PortTaken(err) {
			return err
		}
	}
}

func (c *Cluster) startComponentOnce(ctx context.Context, name string, args ...string) error {
	bin, err := c.bin(name)
	if err != nil {
		return err
	}
	port, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	p, err := c.Start(name, false, nil, bin, append([]string{
		"--kubeconfig=" + c.Kubeconfig, "--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port)}, args...)...)
	if err != nil {
		return err
	}
	// The component serves a self-signed certificate.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer client.CloseIdleConnections()
	return c.waitProc(ctx, p, 60*time.Second, func() error {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/healthz", port))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s healthz: %s", name, resp.Status)
		}
		return nil
	})
}

// startRegistry runs the distribution registry on the host end of the node
// link (containerd in the node pulls from it as a mirror).
func (c *Cluster) startRegistry(ctx context.Context) error {
	return retryTakenPort(func() error { return c.startRegistryOnce(ctx) })
}

func (c *Cluster) startRegistryOnce(ctx context.Context) error {
	bin, err := c.bin("registry")
	if err != nil {
		return err
	}
	port, err := freePort(c.HostIP)
	if err != nil {
		return err
	}
	c.Registry = fmt.Sprintf("%s:%d", c.HostIP, port)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(c.opts.Dir, "registry", "data"), c.Registry)
	cfgPath := filepath.Join(c.opts.Dir, "registry", "config.yml")
	if err := writeFile(cfgPath, cfg, 0o644); err != nil {
		return err
	}
	p, err := c.Start("registry", false, []string{"OTEL_TRACES_EXPORTER=none"}, bin, "serve", cfgPath)
	if err != nil {
		return err
	}
	return c.waitProc(ctx, p, 30*time.Second, func() error {
		resp, err := http.Get("http://" + c.Registry + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("registry /v2/: %s", resp.Status)
		}
		return nil
	})
}

// PauseImage is the sandbox image containerd uses; the harness pushes it.
const PauseImage = "registry.k8s.io/pause:3.10"

// startContainerd runs Debian's containerd in the node's network namespace
// with a private root, state and socket, CRI pulling through the registry
// mirror, a CNI bridge, and the nitro runtime lines of deploy/.
func (c *Cluster) startContainerd(ctx context.Context) error {
	// NITROPOD_CONTAINERD picks another containerd of the version matrix
	// (containerd-1.7, containerd-2.2 from hack/build-tools.sh).
	bin, err := c.bin(cmp.Or(os.Getenv("NITROPOD_CONTAINERD"), "containerd"))
	if err != nil {
		return err
	}
	d := filepath.Join(c.opts.Dir, "containerd")
	c.ContainerdSock = filepath.Join(d, "containerd.sock")
	nitro := ""
	if c.opts.ShimPath != "" {
		if nitro, err = RenderDropIn(c.opts.ContainerdDropIn, c.opts.ShimPath, c.opts.ShimConfig); err != nil {
			return err
		}
	}
	cni := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "nitropod-e2e",
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, c.bridge, filepath.Join(c.opts.Dir, "cni", "ipam"), c.PodSubnet)
	if err := writeFile(filepath.Join(c.opts.Dir, "cni", "net.d", "10-bridge.conflist"), cni, 0o644); err != nil {
		return err
	}
	mirror := fmt.Sprintf("http://%s", c.Registry)
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q

[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = [%q]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.k8s.io"]
    endpoint = [%q]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."ghcr.io"]
    endpoint = [%q]

# BEGIN nitropod
%s# END nitropod
`, filepath.Join(d, "root"), filepath.Join(d, "state"), c.ContainerdSock, c.ContainerdSock+".ttrpc",
		filepath.Join(d, "opt"), PauseImage, filepath.Join(c.opts.Dir, "cni", "net.d"), mirror, mirror, mirror, nitro)
	cfgPath := filepath.Join(d, "config.toml")
	if err := writeFile(cfgPath, cfg, 0o644); err != nil {
		return err
	}
	env := []string{}
	if c.opts.ExtraPath != "" {
		env = append(env, "PATH="+c.opts.ExtraPath+":"+os.Getenv("PATH"))
	}
	p, err := c.Start("containerd", true, env, bin, "--config", cfgPath)
	if err != nil {
		return err
	}
	c.containerd = p
	return c.waitProc(ctx, p, 30*time.Second, func() error {
		conn, err := net.Dial("unix", c.ContainerdSock)
		if err != nil {
			return err
		}
		conn.Close()
		return nil
	})
}

// RenderDropIn reads deploy/'s containerd runtime lines
// (containerd-nitro.toml, which the node installer writes into containerd's
// config) and points the shim path and shim config at this machine's files;
// nothing else changes.
func RenderDropIn(path, shim, shimConfig string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading containerd drop-in: %w", err)
	}
	s := string(data)
	for old, repl := range map[string]string{
		`"/opt/nitropod/bin/containerd-shim-nitro-v1"`: strconv.Quote(shim),
		`"/etc/nitropod/shim.toml"`:                    strconv.Quote(shimConfig),
	} {
		if !strings.Contains(s, old) {
			return "", fmt.Errorf("containerd drop-in %s does not contain %s", path, old)
		}
		s = strings.ReplaceAll(s, old, repl)
	}
	return s, nil
}

// KubeletRoot is the kubelet --root-dir of a cluster in dir.
func KubeletRoot(dir string) string { return filepath.Join(dir, "kubelet") }

// PodResourcesSocket is kubelet's pod-resources socket of a cluster in dir,
// where the shim looks up each enclave's allocation.
func PodResourcesSocket(dir string) string {
	return filepath.Join(KubeletRoot(dir), "pod-resources", "kubelet.sock")
}

// StartKubelet starts (or restarts) kubelet in the node's network namespace.
func (c *Cluster) StartKubelet(ctx context.Context) error {
	bin, err := c.bin("kubelet")
	if err != nil {
		return err
	}
	c.KubeletRoot = KubeletRoot(c.opts.Dir)
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://%s
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
fileCheckFrequency: 10s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
maxPods: 30
resolvConf: ""
`, c.NodeIP, c.ContainerdSock)
	cfgPath := filepath.Join(c.opts.Dir, "kubelet-config.yaml")
	if err := writeFile(cfgPath, cfg, 0o644); err != nil {
		return err
	}
	p, err := c.Start("kubelet", true, nil, bin,
		"--config="+cfgPath, "--kubeconfig="+c.Kubeconfig,
		"--root-dir="+c.KubeletRoot, "--cert-dir="+filepath.Join(c.KubeletRoot, "pki"),
		"--node-ip="+c.NodeIP, "--hostname-override="+c.NodeName,
		"--node-labels=nitropod.io/enclave-node=true", "--v=2")
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.kubelet = p
	c.mu.Unlock()
	c.DevicePluginDir = pluginapi.DevicePluginPath
	started := time.Now().Add(-time.Second)
	return c.waitProc(ctx, p, 60*time.Second, func() error {
		fi, err := os.Stat(pluginapi.KubeletSocket)
		if err != nil {
			return err
		}
		if fi.ModTime().Before(started) {
			return fmt.Errorf("%s is older than this kubelet", pluginapi.KubeletSocket)
		}
		return nil
	})
}

// RestartKubelet stops kubelet and starts it again with the same settings.
func (c *Cluster) RestartKubelet(ctx context.Context) error {
	c.mu.Lock()
	k := c.kubelet
	c.mu.Unlock()
	k.Stop(20 * time.Second)
	return c.StartKubelet(ctx)
}

func (c *Cluster) waitNodeReady(ctx context.Context) error {
	return waitFor(ctx, 120*time.Second, time.Second, func() error {
		out, err := c.Kubectl(ctx, "", "get", "node", c.NodeName, "-o",
			`jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "True" {
			return fmt.Errorf("node %s Ready=%q", c.NodeName, out)
		}
		// kubelet registers with the not-ready taint; without a
		// controller-manager nobody else removes it.
		_, err = c.Kubectl(ctx, "", "taint", "node", c.NodeName, "node.kubernetes.io/not-ready:NoSchedule-")
		if err != nil && !strings.Contains(err.Error(), "not found") {
			return err
		}
		return nil
	})
}
