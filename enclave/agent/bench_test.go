package agent

import (
	"context"
	"io"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// socketpair returns the two ends of a unix stream socketpair as net.Conns.
func socketpair(b *testing.B) (net.Conn, net.Conn) {
	b.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		b.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	b.Cleanup(func() { conns[0].Close(); conns[1].Close() })
	return conns[0], conns[1]
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

const benchChunk = 1 << 20

// BenchmarkRawSocketpair copies bytes over a bare socketpair: the baseline.
func BenchmarkRawSocketpair(b *testing.B) {
	w, r := socketpair(b)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	go func() {
		_, _ = io.CopyBuffer(w, io.LimitReader(zeros{}, int64(b.N)*benchChunk), make([]byte, CopyBufferSize))
		_ = w.(*net.UnixConn).CloseWrite()
	}()
	if n, err := io.CopyBuffer(io.Discard, r, make([]byte, CopyBufferSize)); err != nil || n != int64(b.N)*benchChunk {
		b.Fatalf("copied %d, %v", n, err)
	}
}

// BenchmarkChannelSocketpair copies the same bytes as an app's stdout
// through the agent channel (yamux over the socketpair), as init does.
func BenchmarkChannelSocketpair(b *testing.B) {
	h, e := socketpair(b)
	g, err := NewGuest(e, GuestConfig{AllowForward: true})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	c, err := Connect(context.Background(), h)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	st, err := c.OpenStdio()
	if err != nil {
		b.Fatal(err)
	}
	st.Stdin.Close()
	if err := c.Start(); err != nil {
		b.Fatal(err)
	}
	gs, err := g.WaitStart(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(benchChunk)
	b.ResetTimer()
	go func() {
		_, _ = io.CopyBuffer(gs.Stdout, io.LimitReader(zeros{}, int64(b.N)*benchChunk), make([]byte, CopyBufferSize))
		gs.Stdout.Close()
	}()
	if n, err := io.CopyBuffer(io.Discard, st.Stdout, make([]byte, CopyBufferSize)); err != nil || n != int64(b.N)*benchChunk {
		b.Fatalf("copied %d, %v", n, err)
	}
}
