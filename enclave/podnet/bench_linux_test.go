package podnet

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/enclave/agent"
)

// The benchmarks measure the host side alone (make bench-net): the app is
// a socket in the enclave's namespace, its packets go through a real TUN
// device, the agent channel over a socketpair and the launcher's stack, and
// leave from the Pod's namespace to a server there. The baseline is the
// same transfer from a socket in the Pod's namespace straight to the
// server (a direct socket copy over loopback).

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

const benchChunk = 1 << 20

// sink accepts connections on l and discards what they send.
func sink(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
	}
}

func benchCopy(b *testing.B, dial func() (net.Conn, error)) {
	c, err := dial()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.SetBytes(benchChunk)
	b.ResetTimer()
	if _, err := io.CopyBuffer(c, io.LimitReader(zeros{}, int64(b.N)*benchChunk), make([]byte, 256<<10)); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkDirectCopy(b *testing.B) {
	f := newFixture(b, Limits{})
	l, err := f.pod.Listen("tcp", podIP+":0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go sink(l)
	benchCopy(b, func() (net.Conn, error) { return f.pod.DialContext(context.Background(), "tcp", l.Addr().String()) })
}

func BenchmarkEgressCopy(b *testing.B) {
	f := newFixture(b, Limits{})
	l, err := f.pod.Listen("tcp", podIP+":0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go sink(l)
	benchCopy(b, func() (net.Conn, error) { return f.enc.DialContext(context.Background(), "tcp", l.Addr().String()) })
}

func BenchmarkIngressCopy(b *testing.B) {
	f := newFixture(b, Limits{})
	l, err := f.enc.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go sink(l)
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	f.waitListening(b, port, true)
	benchCopy(b, func() (net.Conn, error) {
		return f.pod.DialContext(context.Background(), "tcp", fmt.Sprintf("%s:%d", podIP, port))
	})
}

// BenchmarkConnect reports the p50 and p99 of an egress connect (SYN from
// the app to an established connection) through the stack, one at a time.
func BenchmarkConnect(b *testing.B) {
	f := newFixture(b, Limits{})
	l, err := f.pod.Listen("tcp", podIP+":0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go sink(l)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		c, err := f.enc.DialContext(context.Background(), "tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		c.Close()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// hostProcEnv makes the test binary run the host side alone (see
// BenchmarkHostRSS): the channel is fd 3, the Pod namespace the variable's
// value.
const hostProcEnv = "NITROPOD_PODNET_HOST_NS"

func TestMain(m *testing.M) {
	if ns := os.Getenv(hostProcEnv); ns != "" {
		os.Exit(hostProc(ns))
	}
	os.Exit(m.Run())
}

func hostProc(nsPath string) int {
	ns, err := OpenNS(nsPath)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	f := os.NewFile(3, "channel")
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := agent.Connect(ctx, conn)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	h, err := NewHost(HostConfig{Addr: netipMust(encIP), Net: ns, AutoListen: true})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if err := h.Attach(ctx, cl); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the benchmark closes it
	h.Close()
	return 0
}

func rssKiB(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

// BenchmarkHostRSS runs the host side in its own process (as the launcher
// does) and reports its RSS with 100 egress connections open, each having
// moved 1 MiB, and with 100 connections through a published port.
func BenchmarkHostRSS(b *testing.B) {
	f := newNamespaces(b)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	child := os.NewFile(uintptr(fds[1]), "child")
	podNS := f.podPath
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), hostProcEnv+"="+podNS)
	cmd.ExtraFiles = []*os.File{child}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	child.Close()
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	pf := os.NewFile(uintptr(fds[0]), "parent")
	gconn, err := net.FileConn(pf)
	pf.Close()
	if err != nil {
		b.Fatal(err)
	}
	g, err := agent.NewGuest(gconn, agent.GuestConfig{Streams: f.guestStreams()})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "ready\n" {
		b.Fatalf("host process: %q", line)
	}
	l, err := f.pod.Listen("tcp", podIP+":0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go sink(l)
	idle := rssKiB(cmd.Process.Pid)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	chunk := make([]byte, 1<<20)
	for range 100 {
		c, err := f.enc.DialContext(context.Background(), "tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
	}
	time.Sleep(time.Second)
	rss := rssKiB(cmd.Process.Pid)
	b.ReportMetric(float64(idle)/1024, "idle-rss-MiB")
	b.ReportMetric(float64(rss)/1024, "rss-100conns-MiB")
}
