package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestExecFraming: a payload larger than MaxExecPayload is split into
// messages of the same type, in order; resize and status payloads round
// trip; an oversized or truncated message is an error, not an allocation.
func TestExecFraming(t *testing.T) {
	var buf bytes.Buffer
	w := NewExecConn(nopCloser{&buf})
	big := bytes.Repeat([]byte("0123456789abcdef"), MaxExecPayload/16*2+3)
	if err := w.Write(ExecStdout, big); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(ExecResize, ResizePayload(50, 132)); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(ExecStdinEOF, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(ExecExit, Uint32s(137, 9)); err != nil {
		t.Fatal(err)
	}
	r := NewExecConn(nopCloser{&buf})
	var got []byte
	n := 0
	for len(got) < len(big) {
		typ, p, err := r.Read(nil)
		if err != nil || typ != ExecStdout || len(p) > MaxExecPayload {
			t.Fatalf("message %d: type %d, %d bytes, %v", n, typ, len(p), err)
		}
		got = append(got, p...)
		n++
	}
	if !bytes.Equal(got, big) || n != 3 {
		t.Fatalf("reassembled %d bytes in %d messages, want %d in 3", len(got), n, len(big))
	}
	typ, p, err := r.Read(nil)
	rows, cols, perr := ParseResize(p)
	if err != nil || typ != ExecResize || perr != nil || rows != 50 || cols != 132 {
		t.Fatalf("resize: type %d rows %d cols %d %v %v", typ, rows, cols, err, perr)
	}
	if typ, p, err := r.Read(nil); err != nil || typ != ExecStdinEOF || len(p) != 0 {
		t.Fatalf("stdin EOF: type %d, %d bytes, %v", typ, len(p), err)
	}
	typ, p, err = r.Read(nil)
	v, verr := ParseUint32s(p, 2)
	if err != nil || typ != ExecExit || verr != nil || v[0] != 137 || v[1] != 9 {
		t.Fatalf("exit: type %d %v %v %v", typ, v, err, verr)
	}
	if _, _, err := r.Read(nil); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last message: %v, want io.EOF", err)
	}

	var hdr [5]byte
	hdr[0] = ExecStdin
	binary.BigEndian.PutUint32(hdr[1:], MaxExecPayload+1)
	if _, _, err := NewExecConn(nopCloser{bytes.NewBuffer(hdr[:])}).Read(nil); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("oversized message: %v", err)
	}
	binary.BigEndian.PutUint32(hdr[1:], 10)
	if _, _, err := NewExecConn(nopCloser{bytes.NewBuffer(append(hdr[:], 'x'))}).Read(nil); err == nil || errors.Is(err, io.EOF) {
		t.Errorf("truncated message: %v", err)
	}
	if _, err := ParseUint32s([]byte{1, 2, 3}, 1); err == nil {
		t.Error("a short status payload parsed")
	}
}

type nopCloser struct{ io.ReadWriter }

func (nopCloser) Close() error { return nil }

// TestExecStream: over a real channel, an exec stream reaches the guest's
// handler with the request, carries messages both ways, and is refused
// with a message before a handler is set or for an empty command.
func TestExecStream(t *testing.T) {
	c, g := pair(t)
	x, err := c.Exec(ExecRequest{Args: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	typ, p, err := x.Read(nil)
	if err != nil || typ != ExecError || !strings.Contains(string(p), "still starting its app") {
		t.Fatalf("exec before the handler: type %d %q %v", typ, p, err)
	}
	if _, err := c.Exec(ExecRequest{}); err == nil {
		t.Error("an exec without a command was sent")
	}

	reqs := make(chan ExecRequest, 1)
	g.SetExecHandler(func(req ExecRequest, conn *ExecConn) {
		defer conn.Close()
		reqs <- req
		_ = conn.Write(ExecStarted, Uint32s(42))
		typ, p, err := conn.Read(nil)
		if err != nil || typ != ExecStdin {
			return
		}
		_ = conn.Write(ExecStdout, bytes.ToUpper(p))
		_ = conn.Write(ExecExit, Uint32s(3, 0))
	})
	x, err = c.Exec(ExecRequest{Args: []string{"cat", "-"}, TTY: true, Rows: 24, Cols: 80, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	if req := <-reqs; req.Args[1] != "-" || !req.TTY || req.Rows != 24 || req.Cols != 80 || !req.Stdin {
		t.Errorf("the guest got %+v", req)
	}
	if typ, p, err := x.Read(nil); err != nil || typ != ExecStarted || binary.BigEndian.Uint32(p) != 42 {
		t.Fatalf("started: %d %v %v", typ, p, err)
	}
	if err := x.Write(ExecStdin, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if typ, p, err := x.Read(nil); err != nil || typ != ExecStdout || string(p) != "HELLO" {
		t.Fatalf("stdout: %d %q %v", typ, p, err)
	}
	if typ, p, err := x.Read(nil); err != nil || typ != ExecExit || binary.BigEndian.Uint32(p) != 3 {
		t.Fatalf("exit: %d %v %v", typ, p, err)
	}
	if _, _, err := x.Read(nil); !errors.Is(err, io.EOF) {
		t.Fatalf("after exit: %v, want EOF", err)
	}
}
