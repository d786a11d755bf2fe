package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/enclave/agent"
)

// Exec: the shim runs a process in the enclave (containerd's Exec and
// Start of an exec id) through its container's launcher, which owns the
// agent channel. The launcher listens on ExecSocket in the bundle
// directory (mode 0600, so only root reaches it) once the app runs. For
// each exec the shim connects, sends an ExecSpec frame and then ExecMsgs
// (resize, signal, close-stdin); the launcher opens the exec's FIFOs,
// asks init over an agent exec stream, and answers started or error, and
// later exit, sent only after the exec's output was written to its FIFOs
// and they were closed. Frames are agent.WriteFrame's (bounded by
// agent.MaxFrame); ExecSpec is bounded further by CheckExecSpec.
const ExecSocket = "nitropod-exec.sock"

// Exec message types between shim and launcher.
const (
	ExecMsgStarted    = "started"     // launcher → shim: Pid runs
	ExecMsgError      = "error"       // launcher → shim: not started, Error says why
	ExecMsgExit       = "exit"        // launcher → shim: Code, Signal; output complete
	ExecMsgResize     = "resize"      // shim → launcher: Rows x Cols
	ExecMsgSignal     = "signal"      // shim → launcher: Signal
	ExecMsgCloseStdin = "close-stdin" // shim → launcher: EOF to stdin
)

// ExecSpec is the shim's request for one exec.
type ExecSpec struct {
	ID       string   `json:"id"`
	Args     []string `json:"args"`
	Terminal bool     `json:"terminal,omitempty"`
	Rows     uint16   `json:"rows,omitempty"`
	Cols     uint16   `json:"cols,omitempty"`
	// Stdin, Stdout, Stderr are containerd's FIFOs ("" for none).
	Stdin  string `json:"stdin,omitempty"`
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
}

// ExecMsg is one message about a running exec.
type ExecMsg struct {
	Type   string `json:"type"`
	Pid    int    `json:"pid,omitempty"`
	Code   int    `json:"code,omitempty"`
	Signal int    `json:"signal,omitempty"`
	Rows   uint16 `json:"rows,omitempty"`
	Cols   uint16 `json:"cols,omitempty"`
	Error  string `json:"error,omitempty"`
}

// stdinDrain bounds how long an exec's stdin FIFO is still read after the
// shim's close-stdin.
const stdinDrain = 2 * time.Second

// maxExecConns bounds the execs one launcher serves at once.
const maxExecConns = 64

// CheckExecSpec reports what is wrong with an exec request.
func CheckExecSpec(s ExecSpec) error {
	if err := (agent.ExecRequest{Args: s.Args}).Check(); err != nil {
		return err
	}
	if len(s.ID) > 1024 {
		return fmt.Errorf("exec id of %d bytes", len(s.ID))
	}
	for _, p := range []string{s.Stdin, s.Stdout, s.Stderr} {
		if p != "" && (!filepath.IsAbs(p) || len(p) > 4096) {
			return fmt.Errorf("exec stdio %q is not an absolute path of at most 4096 bytes", p)
		}
	}
	return nil
}

// execSocketPath returns an address of bundle's ExecSocket that fits a
// unix socket address (bundle paths are long): through an O_PATH handle
// of the directory, closed by the returned func once used.
func execSocketPath(bundle string) (string, func(), error) {
	fd, err := unix.Open(bundle, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("opening bundle %s: %w", bundle, err)
	}
	return "/proc/self/fd/" + strconv.Itoa(fd) + "/" + ExecSocket, func() { unix.Close(fd) }, nil
}

// Execer runs execs in the enclave (enclave.Session).
type Execer interface {
	Exec(req agent.ExecRequest) (*agent.ExecConn, error)
}

// ServeExec listens on bundle's ExecSocket and serves execs with e until
// the returned stop is called.
func ServeExec(bundle string, e Execer, logger *log.Logger) (stop func(), err error) {
	path, done, err := execSocketPath(bundle)
	if err != nil {
		return nil, err
	}
	_ = os.Remove(filepath.Join(bundle, ExecSocket))
	l, err := net.Listen("unix", path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	done()
	if err != nil {
		if l != nil {
			l.Close()
		}
		return nil, fmt.Errorf("listening for execs in %s: %w", bundle, err)
	}
	sem := make(chan struct{}, maxExecConns)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case sem <- struct{}{}:
			default:
				_ = agent.WriteFrame(c, ExecMsg{Type: ExecMsgError, Error: fmt.Sprintf("the launcher already serves %d execs, the most it allows", maxExecConns)})
				c.Close()
				continue
			}
			go func() {
				defer func() { <-sem }()
				serveExec(c, e, logger)
			}()
		}
	}()
	return func() {
		l.Close()
		wg.Wait()
		_ = os.Remove(filepath.Join(bundle, ExecSocket))
	}, nil
}

// serveExec runs one exec for the shim connected on c.
func serveExec(c net.Conn, e Execer, logger *log.Logger) {
	defer c.Close()
	var wmu sync.Mutex
	send := func(m ExecMsg) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = agent.WriteFrame(c, m)
	}
	var spec ExecSpec
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	err := agent.ReadFrame(c, &spec)
	_ = c.SetReadDeadline(time.Time{})
	if err == nil {
		err = CheckExecSpec(spec)
	}
	if err != nil {
		send(ExecMsg{Type: ExecMsgError, Error: fmt.Sprintf("bad exec request: %v", err)})
		return
	}
	// The FIFOs' opens complete in the background (stdin's once its writer
	// opens it) and are abandoned when ctx ends: it lasts as long as the
	// exec.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdio, err := openExecStdio(ctx, spec)
	if err != nil {
		send(ExecMsg{Type: ExecMsgError, Error: err.Error()})
		return
	}
	defer stdio.close()
	t0 := time.Now()
	x, err := e.Exec(agent.ExecRequest{Args: spec.Args, TTY: spec.Terminal, Rows: spec.Rows, Cols: spec.Cols, Stdin: stdio.stdin != nil})
	if err != nil {
		send(ExecMsg{Type: ExecMsgError, Error: fmt.Sprintf("exec in the enclave: %v", err)})
		return
	}
	defer x.Close()
	buf := make([]byte, agent.MaxExecPayload)
	t, p, err := x.Read(buf)
	switch {
	case err != nil:
		send(ExecMsg{Type: ExecMsgError, Error: fmt.Sprintf("exec in the enclave: %v", err)})
		return
	case t == agent.ExecError:
		send(ExecMsg{Type: ExecMsgError, Error: string(p)})
		return
	case t != agent.ExecStarted:
		send(ExecMsg{Type: ExecMsgError, Error: fmt.Sprintf("exec in the enclave: unexpected message %d before started", t)})
		return
	}
	v, err := agent.ParseUint32s(p, 1)
	if err != nil {
		send(ExecMsg{Type: ExecMsgError, Error: fmt.Sprintf("exec in the enclave: %v", err)})
		return
	}
	pid := int(v[0])
	logger.Printf("exec %s started (pid %d in the enclave)", spec.ID, pid)
	send(ExecMsg{Type: ExecMsgStarted, Pid: pid})

	// stdin: the FIFO until EOF. The shim's close-stdin (containerd's
	// CloseIO, which CRI sends right after it wrote the last input into
	// the FIFO and closed it) lets the reader drain what the FIFO still
	// holds first, for up to stdinDrain.
	var stdinOnce sync.Once
	sendEOF := func() { stdinOnce.Do(func() { _ = x.Write(agent.ExecStdinEOF, nil) }) }
	stdinDone := make(chan struct{})
	closeStdin := sendEOF
	if stdio.stdin != nil {
		go func() {
			defer close(stdinDone)
			b := make([]byte, agent.MaxExecPayload)
			for {
				n, err := stdio.stdin.Read(b)
				if n > 0 {
					if x.Write(agent.ExecStdin, b[:n]) != nil {
						return
					}
				}
				if err != nil {
					sendEOF()
					return
				}
			}
		}()
		closeStdin = func() {
			select {
			case <-stdinDone:
			case <-time.After(stdinDrain):
				stdio.stdin.Close()
			}
		}
	}
	// The shim's requests.
	go func() {
		for {
			var m ExecMsg
			if err := agent.ReadFrame(c, &m); err != nil {
				return
			}
			switch m.Type {
			case ExecMsgResize:
				_ = x.Write(agent.ExecResize, agent.ResizePayload(m.Rows, m.Cols))
			case ExecMsgSignal:
				if m.Signal > 0 && m.Signal < 65 {
					_ = x.Write(agent.ExecSignal, agent.Uint32s(uint32(m.Signal)))
				}
			case ExecMsgCloseStdin:
				go closeStdin()
			}
		}
	}()
	for {
		t, p, err := x.Read(buf)
		if err != nil {
			// The channel or the enclave ended without a status.
			stdio.close()
			logger.Printf("exec %s: the enclave ended it without an exit status: %v", spec.ID, err)
			send(ExecMsg{Type: ExecMsgExit, Code: 128 + int(unix.SIGKILL), Signal: int(unix.SIGKILL)})
			return
		}
		switch t {
		case agent.ExecStdout:
			_, _ = stdio.stdout.Write(p)
		case agent.ExecStderr:
			_, _ = stdio.stderr.Write(p)
		case agent.ExecExit:
			v, err := agent.ParseUint32s(p, 2)
			if err != nil {
				v = []uint32{255, 0}
			}
			// Output is complete once the FIFOs are closed.
			stdio.close()
			// "in the enclave": from the request on the agent channel to the
			// exit status (make bench-exec reads it).
			logger.Printf("exec %s exited: code %d signal %d; %dus in the enclave", spec.ID, v[0], v[1], time.Since(t0).Microseconds())
			send(ExecMsg{Type: ExecMsgExit, Code: int(v[0]), Signal: int(v[1])})
			return
		}
	}
}

// execStdio are the launcher's ends of one exec's FIFOs.
type execStdio struct {
	stdin          io.ReadCloser
	stdout, stderr *draining
	closers        []io.Closer
	once           sync.Once
}

func (s *execStdio) close() {
	s.once.Do(func() {
		for _, c := range s.closers {
			c.Close()
		}
	})
}

func openExecStdio(ctx context.Context, spec ExecSpec) (*execStdio, error) {
	s := &execStdio{stdout: &draining{w: io.Discard}, stderr: &draining{w: io.Discard}}
	for _, o := range []struct {
		path string
		dst  *draining
	}{{spec.Stdout, s.stdout}, {spec.Stderr, s.stderr}} {
		if o.path == "" {
			continue
		}
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		f, err := fifo.OpenFifo(octx, o.path, unix.O_WRONLY, 0)
		cancel()
		if err != nil {
			s.close()
			return nil, fmt.Errorf("opening exec output fifo %s: %w", o.path, err)
		}
		s.closers = append(s.closers, f)
		o.dst.w = f
	}
	if spec.Stdin != "" {
		f, err := fifo.OpenFifo(ctx, spec.Stdin, unix.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("opening exec stdin fifo %s: %w", spec.Stdin, err)
		}
		s.closers = append(s.closers, f)
		s.stdin = f
	}
	return s, nil
}

// draining writes to w until a write fails, then discards: a reader that
// went away must not stop the exec.
type draining struct {
	w      io.Writer
	failed bool
}

func (d *draining) Write(p []byte) (int, error) {
	if !d.failed {
		if _, err := d.w.Write(p); err != nil {
			d.failed = true
		}
	}
	return len(p), nil
}

// ExecClient is the shim's end of one exec.
type ExecClient struct {
	c   net.Conn
	wmu sync.Mutex
}

// DialExec connects to the launcher of the container in bundle and sends
// spec. Recv then returns started or error, and later exit.
func DialExec(ctx context.Context, bundle string, spec ExecSpec) (*ExecClient, error) {
	if err := CheckExecSpec(spec); err != nil {
		return nil, err
	}
	path, done, err := execSocketPath(bundle)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	done()
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("the container's launcher does not take execs (is the container running?): %w", err)
		}
		return nil, fmt.Errorf("connecting to the container's launcher: %w", err)
	}
	ec := &ExecClient{c: c}
	if err := ec.write(spec); err != nil {
		c.Close()
		return nil, fmt.Errorf("sending the exec request to the launcher: %w", err)
	}
	return ec, nil
}

// Send sends m (resize, signal, close-stdin) to the launcher.
func (e *ExecClient) Send(m ExecMsg) error { return e.write(m) }

func (e *ExecClient) write(m any) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return agent.WriteFrame(e.c, m)
}

// Recv reads the launcher's next message; only one goroutine may call it.
func (e *ExecClient) Recv() (ExecMsg, error) {
	var m ExecMsg
	err := agent.ReadFrame(e.c, &m)
	return m, err
}

// Close ends the connection (the exec keeps running in the enclave only
// until the launcher notices; close after exit).
func (e *ExecClient) Close() error { return e.c.Close() }
