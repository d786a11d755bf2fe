// Package ctrtest starts a private, real containerd for integration tests:
// Debian's containerd (1.6) with its own root, state, sockets and config
// under a temporary directory, talked to with `ctr -a SOCKET`. It imports
// images (go-containerregistry images written as tarballs), optionally
// enables the CRI plugin with a runtime handler and a CNI bridge, and can
// restart containerd while shims keep running. Everything it starts stops
// in t.Cleanup.
package ctrtest

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/internal/testenv"
)

// Options configure a private containerd.
type Options struct {
	// PathDirs are prepended to containerd's PATH (where it finds shims).
	PathDirs []string
	// Env is added to containerd's environment (shims inherit it).
	Env []string
	// CRI enables the CRI plugin; without it the plugin is disabled.
	CRI *CRIOptions
	// NetNS runs containerd (and so its shims and CNI) in a network
	// namespace made for the test, so pod networks live there and nothing
	// touches the host's network.
	NetNS bool
}

// CRIOptions configure the CRI plugin.
type CRIOptions struct {
	// SandboxImage is the pause image (imported by the test).
	SandboxImage string
	// Runtimes maps a handler name to its runtime type, e.g.
	// "nitro" → "io.containerd.nitro.v1"; "runc" is always present.
	Runtimes map[string]string
	// RuntimeConfigPath is passed to every non-runc runtime as ConfigPath.
	RuntimeConfigPath string
	// PodAnnotations are the pod_annotations globs of non-runc runtimes.
	PodAnnotations []string
	// CNIConfDir holds the CNI network config; CNIBinDir the plugins.
	CNIConfDir string
	CNIBinDir  string
}

// Containerd is one private containerd.
type Containerd struct {
	Dir     string
	Root    string
	State   string
	Socket  string
	Config  string
	LogPath string

	// NetNSPath is containerd's network namespace (Options.NetNS), or "".
	NetNSPath string

	env   []string
	cmd   *exec.Cmd
	t     testing.TB
	netns string
}

// Start starts containerd and waits until it answers.
func Start(t testing.TB, opts Options) *Containerd {
	t.Helper()
	testenv.RequireRoot(t)
	// NITROPOD_CONTAINERD names another containerd binary (containerd-1.7,
	// containerd-2.2 from hack/build-tools.sh) for the version matrix.
	bin := testenv.Binary(t, cmp.Or(os.Getenv("NITROPOD_CONTAINERD"), "containerd"))
	testenv.Binary(t, "ctr")
	testenv.Binary(t, "runc")
	// Unix socket paths are limited to 108 bytes: keep the dir short.
	dir, err := os.MkdirTemp("/tmp", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Dir:     dir,
		Root:    filepath.Join(dir, "root"),
		State:   filepath.Join(dir, "state"),
		Socket:  filepath.Join(dir, "c.sock"),
		Config:  filepath.Join(dir, "config.toml"),
		LogPath: filepath.Join(dir, "containerd.log"),
		t:       t,
	}
	path := strings.Join(append(append([]string{}, opts.PathDirs...), os.Getenv("PATH")), ":")
	c.env = append(append(os.Environ(), "PATH="+path), opts.Env...)
	if err := os.WriteFile(c.Config, []byte(c.config(opts)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.cleanup)
	if opts.NetNS {
		c.netns = filepath.Base(dir)
		if out, err := exec.Command("ip", "netns", "add", c.netns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", c.netns, err, out)
		}
		c.NetNSPath = filepath.Join("/run/netns", c.netns)
		if out, err := exec.Command("ip", "-n", c.netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("bringing lo up in %s: %v: %s", c.netns, err, out)
		}
	}
	c.start(bin)
	return c
}

func (c *Containerd) config(opts Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version = 2\nroot = %q\nstate = %q\n", c.Root, c.State)
	if opts.CRI == nil {
		b.WriteString("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n")
	}
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n[debug]\n  level = \"debug\"\n", c.Socket, c.Socket+".ttrpc")
	fmt.Fprintf(&b, "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n", filepath.Join(c.Dir, "opt"))
	if cri := opts.CRI; cri != nil {
		bin := cri.CNIBinDir
		if bin == "" {
			bin = "/usr/lib/cni"
		}
		fmt.Fprintf(&b, `[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
`, cri.SandboxImage, bin, cri.CNIConfDir)
		for h, typ := range cri.Runtimes {
			fmt.Fprintf(&b, "    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.%s]\n      runtime_type = %q\n", h, typ)
			if len(cri.PodAnnotations) > 0 {
				fmt.Fprintf(&b, "      pod_annotations = [%s]\n", quoteList(cri.PodAnnotations))
			}
			if cri.RuntimeConfigPath != "" {
				fmt.Fprintf(&b, "      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.%s.options]\n        ConfigPath = %q\n", h, cri.RuntimeConfigPath)
			}
		}
	}
	return b.String()
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

func (c *Containerd) start(bin string) {
	c.t.Helper()
	logf, err := os.OpenFile(c.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--config", c.Config)
	if c.NetNSPath != "" {
		// nsenter joins only the network namespace (ip netns exec would
		// also remount /sys, hiding the cgroup hierarchies).
		cmd = exec.Command("nsenter", "--net="+c.NetNSPath, bin, "--config", c.Config)
	}
	cmd.Env = c.env
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group: shims are started in theirs, so stopping
	// containerd leaves them running (as a restart must).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("starting containerd: %v", err)
	}
	c.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if conn, err := net.Dial("unix", c.Socket); err == nil {
			conn.Close()
			if _, err := c.ctr(context.Background(), "", "version"); err == nil {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("containerd did not answer on %s within 30s; log:\n%s", c.Socket, c.Log())
}

// Restart stops containerd (SIGTERM) and starts it again on the same state;
// running shims and containers are left alone.
func (c *Containerd) Restart() {
	c.t.Helper()
	c.stop()
	c.start(c.cmd.Path)
}

func (c *Containerd) stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// Log is containerd's log so far.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(c.LogPath)
	return string(b)
}

func (c *Containerd) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Remove every task and container so shims exit, then stop containerd.
	for _, ns := range c.namespaces(ctx) {
		out, _ := c.ctr(ctx, ns, "tasks", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _ = c.ctr(ctx, ns, "tasks", "kill", "-s", "SIGKILL", id)
		}
		for _, id := range strings.Fields(out) {
			_, _ = c.ctr(ctx, ns, "tasks", "rm", "-f", id)
		}
		out, _ = c.ctr(ctx, ns, "containers", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _ = c.ctr(ctx, ns, "containers", "rm", id)
		}
	}
	if c.t.Failed() {
		c.t.Logf("containerd log (%s):\n%s", c.LogPath, tail(c.Log(), 200))
	}
	c.stop()
	unmountUnder(c.Dir)
	_ = os.RemoveAll(c.Dir)
	if c.netns != "" {
		_ = exec.Command("ip", "netns", "del", c.netns).Run()
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *Containerd) namespaces(ctx context.Context) []string {
	out, err := c.ctr(ctx, "", "namespaces", "ls", "-q")
	if err != nil {
		return nil
	}
	return strings.Fields(out)
}

func (c *Containerd) ctr(ctx context.Context, ns string, args ...string) (string, error) {
	full := []string{"-a", c.Socket}
	if ns != "" {
		full = append(full, "-n", ns)
	}
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, "ctr", full...)
	cmd.Env = c.env
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// Ctr runs `ctr -a SOCKET -n ns args...` and returns its combined output.
func (c *Containerd) Ctr(ctx context.Context, ns string, args ...string) (string, error) {
	return c.ctr(ctx, ns, args...)
}

// CtrCmd is an unstarted `ctr` command against this containerd.
func (c *Containerd) CtrCmd(ctx context.Context, ns string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", c.Socket, "-n", ns}, args...)...)
	cmd.Env = c.env
	return cmd
}

// Import writes img as a tarball named ref and imports it into namespace ns.
func (c *Containerd) Import(ctx context.Context, ns, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("parsing image ref %q: %w", ref, err)
	}
	f, err := os.CreateTemp(c.Dir, "image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := tarball.Write(tag, img, f); err != nil {
		f.Close()
		return fmt.Errorf("writing image tarball: %w", err)
	}
	f.Close()
	if _, err := c.ctr(ctx, ns, "images", "import", "--all-platforms", f.Name()); err != nil {
		return err
	}
	return nil
}

// InNetNS runs fn on an OS thread inside containerd's network namespace
// (or directly when there is none); sockets fn opens stay in it.
func (c *Containerd) InNetNS(fn func() error) error {
	if c.NetNSPath == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		f, err := os.Open(c.NetNSPath)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("joining %s: %w", c.NetNSPath, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// unmountUnder lazily unmounts every mount point below dir, deepest first
// (rootfs overlays, CRI's sandbox shm), so the directory can be removed.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, p := range points {
		_ = unix.Unmount(p, unix.MNT_DETACH)
	}
}
