package qemu_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/podnet"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

// The test host: its own network namespace joined to the test's by a veth
// pair, with an HTTP server and a DNS server on hostIP.
const (
	vethHostIP = "198.51.100.1" // the test's (the launcher's) side
	hostIP     = "198.51.100.2" // the test host's side
)

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testHost makes the test host and returns its namespace.
func testHost(t *testing.T) *podnet.NS {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.Missing(t, "the ip command (iproute2)")
	}
	id := fmt.Sprint(rand.IntN(1 << 20))
	ns, veth := "np-th-"+id, "np-vh-"+id
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	sh(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", veth).Run() })
	sh(t, "ip", "addr", "add", vethHostIP+"/24", "dev", veth)
	sh(t, "ip", "link", "set", veth, "up")
	sh(t, "ip", "-n", ns, "addr", "add", hostIP+"/24", "dev", "eth0")
	sh(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	n, err := podnet.OpenNS("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// serveDNS answers A queries for web.test. with hostIP, others NXDOMAIN.
func serveDNS(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
		b.EnableCompression()
		_ = b.StartQuestions()
		_ = b.Question(q)
		_ = b.StartAnswers()
		if q.Type == dnsmessage.TypeA && strings.EqualFold(q.Name.String(), "web.test.") {
			_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: netip.MustParseAddr(hostIP).As4()})
		}
		out, err := b.Finish()
		if err == nil {
			_, _ = pc.WriteTo(out, from)
		}
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestEnclaveNetwork: the app in a real (emulated) enclave fetches a page
// over TCP and resolves a name over UDP from a test host in another network
// namespace; it listens on a port nobody declared, which the host publishes
// and a client on the test host reaches, the app seeing the client's own
// address; its loopback-only listener and init's attestation API (also on
// the enclave's loopback) stay out of the host's reach.
func TestEnclaveNetwork(t *testing.T) {
	b, _ := backend(t)
	th := testHost(t)
	web, err := th.Listen("tcp", hostIP+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	page := strings.Repeat("page from the test host\n", 4000)
	go func() {
		_ = http.Serve(web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, page)
		}))
	}()
	dns, err := th.ListenPacket("udp", hostIP+":53")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	go serveDNS(dns)

	open, lo := freePort(t), freePort(t)
	script := fmt.Sprintf(`wget -q -O /tmp/page http://%[1]s/ && echo "wget ok $(wc -c </tmp/page)"; `+
		`nslookup web.test %[1]s; httpd -p %[2]d -h /var/www; httpd -p 127.0.0.1:%[3]d -h /var/www; echo ready; sleep 600`,
		hostIP, open, lo)
	img := busybox(t, testimage.Cmd("sh", "-c", script))
	img = withLayer(t, img,
		testimage.Reg("var/www/cgi-bin/peer", 0o755, "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n"),
		testimage.Symlink("bin/wget", "busybox"),
		testimage.Symlink("bin/nslookup", "busybox"),
		testimage.Symlink("bin/wc", "busybox"))
	path := buildEIF(t, img, false)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := &notifyBuffer{want: "ready\n", ch: make(chan struct{})}
	s, err := enclave.Start(ctx, b, enclave.Request{EIFPath: path, CPUs: 1, MemoryMiB: 256},
		enclave.RunIO{Stdout: out, Stderr: out, Net: &podnet.HostConfig{AutoListen: true, Logf: t.Logf}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Terminate(context.Background()) }()
	select {
	case <-out.ch:
	case <-ctx.Done():
		t.Fatalf("the app did not get ready; output:\n%s", out.String())
	}
	got := out.String()
	if !strings.Contains(got, fmt.Sprintf("wget ok %d", len(page))) {
		t.Errorf("egress TCP: the app's wget did not fetch the %d-byte page:\n%s", len(page), got)
	}
	if !strings.Contains(got, "Address: "+hostIP) && !strings.Contains(got, "Address 1: "+hostIP) {
		t.Errorf("egress UDP: nslookup did not resolve web.test to %s:\n%s", hostIP, got)
	}

	// The undeclared port, reached from the test host through the
	// launcher's namespace; the CGI prints the peer the app saw.
	n := s.Network()
	deadline := time.Now().Add(30 * time.Second)
	for !has(n.Listening(), uint16(open)) {
		if time.Now().After(deadline) {
			t.Fatalf("port %d the app listens on was not published (published: %v)", open, n.Listening())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// net/http dials on its own goroutines: dial through the namespace.
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: th.DialContext}}
	var body []byte
	resp, err := c.Get(fmt.Sprintf("http://%s:%d/cgi-bin/peer", vethHostIP, open))
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err != nil {
		t.Fatalf("a client on the test host reaching the undeclared port: %v", err)
	}
	// busybox httpd listens on IPv6 and shows IPv4 peers mapped.
	if seen := strings.TrimSpace(string(body)); seen != hostIP && seen != "[::ffff:"+hostIP+"]" {
		t.Errorf("the app saw its client as %q, want the client's own address %s", seen, hostIP)
	}

	// Loopback-only sockets: never published, not reachable through the
	// stack by a host that tries (the launcher is the host here).
	if has(n.Listening(), uint16(lo)) {
		t.Errorf("the loopback-only port %d was published", lo)
	}
	for _, p := range []uint16{uint16(lo), 9910} {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := n.DialEnclave(dctx, netip.MustParseAddrPort(hostIP+":40000"), p)
		dcancel()
		if err == nil {
			c.Close()
			t.Errorf("the host reached the enclave's loopback-only port %d", p)
		}
	}
	if _, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", lo)); err == nil {
		t.Errorf("something on the host listens on the enclave's loopback-only port %d", lo)
	}
}

func has(ps []uint16, p uint16) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}

// withLayer adds a layer with files to img.
func withLayer(t *testing.T, img v1.Image, files ...testimage.File) v1.Image {
	t.Helper()
	out, err := mutate.AppendLayers(img, testimage.Layer(t, files...))
	if err != nil {
		t.Fatal(err)
	}
	return out
}
