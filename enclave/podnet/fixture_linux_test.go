package podnet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/internal/testenv"
)

// The test network: "pod" is the Pod's network namespace (the launcher's
// side), with podIP and clientIP on its loopback (a server and a client
// "elsewhere" in the Pod network); "enc" stands for the enclave: a real TUN
// device served by the same code init runs (ServePackets, ServePorts), its
// sockets made in that namespace (the app). The two are joined by the real
// agent channel over a socketpair, as the launcher and init are joined by
// vsock or virtio-serial: the host side without a VM.
const (
	podIP    = "192.0.2.1"
	clientIP = "192.0.2.7"
	encIP    = "10.0.2.15"
)

type fixture struct {
	pod, enc *NS
	podPath  string
	gcfg     GuestConfig
	host     *Host
	client   *agent.Client
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func netns(t testing.TB, name string) *NS {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	ns, err := OpenNS("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Close)
	return ns
}

func newFixture(t testing.TB, lim Limits) *fixture {
	t.Helper()
	f := newNamespaces(t)
	f.attach(t, lim)
	return f
}

// newNamespaces makes the pod and enc namespaces.
func newNamespaces(t testing.TB) *fixture {
	t.Helper()
	if tt, ok := t.(*testing.T); ok {
		testenv.Integration(tt)
	}
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.Missing(t, "the ip command (iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Missing(t, "/dev/net/tun")
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), rand.IntN(1<<30))
	f := &fixture{pod: netns(t, "np-pod-"+id), enc: netns(t, "np-enc-"+id), podPath: "/run/netns/np-pod-" + id}
	run(t, "ip", "-n", "np-pod-"+id, "addr", "add", podIP+"/32", "dev", "lo")
	run(t, "ip", "-n", "np-pod-"+id, "addr", "add", clientIP+"/32", "dev", "lo")

	// The enclave side's sockets are the enc namespace's: ask from a
	// thread in it.
	f.gcfg = GuestConfig{PollInterval: 50 * time.Millisecond, Listening: func() (ports []uint16, err error) {
		if e := f.enc.Do(func() { ports, err = ListeningTCP() }); e != nil {
			return nil, e
		}
		return ports, err
	}}
	return f
}

// attach joins the namespaces with a Host over the agent channel.
func (f *fixture) attach(t testing.TB, lim Limits) {
	t.Helper()

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f) // pollable: Close ends a blocked Read
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	hc, gc := conns[0], conns[1]
	g, err := agent.NewGuest(gc, agent.GuestConfig{Streams: f.guestStreams()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f.client, err = agent.Connect(ctx, hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.client.Close() })
	f.host, err = NewHost(HostConfig{Addr: netipMust(encIP), Net: f.pod, AutoListen: true, Limits: lim, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.host.Close)
	if err := f.host.Attach(ctx, f.client); err != nil {
		t.Fatal(err)
	}
}

// guestStreams are init's handlers, run in the enc namespace.
func (f *fixture) guestStreams() map[string]func(net.Conn) {
	return map[string]func(net.Conn){
		KindPackets: func(s net.Conn) {
			// Set up the device on a thread of the enc namespace; the
			// copying goes on from any thread (the fd is the device).
			_ = f.enc.do(context.Background(), func() { ServePackets(s, f.gcfg) })
		},
		KindPorts: func(s net.Conn) { ServePorts(s, f.gcfg) },
	}
}

// waitListening waits until the host published port (or, with want false,
// until it is not published).
func (f *fixture) waitListening(t testing.TB, port uint16, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		has := false
		for _, p := range f.host.Listening() {
			has = has || p == port
		}
		if has == want {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("port %d published: want %v after 10s", port, want)
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }
