package initproc

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave/agent"
)

// maxExecs bounds the execs running at once; more are refused.
const maxExecs = 64

// execDrainTimeout bounds how long an exec's output is read after it
// exited (a child it left behind may hold the pipes open).
const execDrainTimeout = 5 * time.Second

// execHandler runs the host's exec requests (agent.KindExec) as proc
// allows them (proc.Exec): with the app's environment, working directory,
// user, groups and security context, on pipes or on a pseudo-terminal of
// the enclave's devpts.
func (i *initState) execHandler(proc *ramdisk.Process) agent.ExecHandler {
	env := Env(proc)
	cwd := proc.Cwd
	if cwd == "" {
		cwd = "/"
	}
	groups := append([]uint32(nil), proc.AdditionalGIDs...)
	var mu sync.Mutex
	running := 0
	return func(req agent.ExecRequest, c *agent.ExecConn) {
		defer c.Close()
		fail := func(msg string) { _ = c.Write(agent.ExecError, []byte(msg)) }
		if !proc.Exec.Allows(req.Args) {
			i.logf("refused exec of a command that is not measured (%d arguments)", len(req.Args))
			fail(contract.ExecRefusal(req.Args))
			return
		}
		mu.Lock()
		if running >= maxExecs {
			mu.Unlock()
			fail(fmt.Sprintf("the enclave already runs %d execs, the most it allows: wait for one to end", maxExecs))
			return
		}
		running++
		mu.Unlock()
		defer func() { mu.Lock(); running--; mu.Unlock() }()
		path, err := LookPath("/", req.Args[0], env, cwd)
		if err != nil {
			fail(fmt.Sprintf("exec failed: %v", err))
			return
		}
		if err := runExec(i.reaper, proc, req, path, env, cwd, groups, c); err != nil {
			fail(fmt.Sprintf("exec of %s failed: %v", contract.Clip(req.Args[0]), err))
		}
	}
}

// execIO are init's ends of one exec's stdio.
type execIO struct {
	child     []*os.File // the child's 0, 1, 2
	stdin     io.WriteCloser
	outs      []io.ReadCloser // stdout (and stderr without a tty)
	ptmx      *os.File
	closeOnce sync.Once
}

func openExecIO(req agent.ExecRequest) (*execIO, error) {
	x := &execIO{}
	if req.TTY {
		ptmx, tty, err := pty.Open()
		if err != nil {
			return nil, fmt.Errorf("opening a pseudo-terminal: %w", err)
		}
		if req.Rows > 0 && req.Cols > 0 {
			_ = pty.Setsize(ptmx, &pty.Winsize{Rows: req.Rows, Cols: req.Cols})
		}
		x.ptmx = ptmx
		x.child = []*os.File{tty, tty, tty}
		x.stdin = ptmx
		x.outs = []io.ReadCloser{ptmx}
		return x, nil
	}
	var in *os.File
	if req.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		in, x.stdin = r, w
	} else {
		f, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		in = f
	}
	x.child = []*os.File{in}
	for range 2 {
		r, w, err := os.Pipe()
		if err != nil {
			x.closeChild()
			x.closeParent()
			return nil, err
		}
		x.child = append(x.child, w)
		x.outs = append(x.outs, r)
	}
	return x, nil
}

func (x *execIO) closeChild() {
	seen := map[*os.File]bool{}
	for _, f := range x.child {
		if !seen[f] {
			seen[f] = true
			f.Close()
		}
	}
}

func (x *execIO) closeStdin() {
	if x.stdin != nil && x.ptmx == nil {
		x.closeOnce.Do(func() { x.stdin.Close() })
	}
}

func (x *execIO) closeParent() {
	x.closeStdin()
	for _, r := range x.outs {
		r.Close()
	}
}

// runExec starts one exec, relays its stdio, terminal size and signals over
// c, and reports its exit status after all of its output.
func runExec(r *reaper, proc *ramdisk.Process, req agent.ExecRequest, path string, env []string, cwd string, groups []uint32, c *agent.ExecConn) error {
	x, err := openExecIO(req)
	if err != nil {
		return err
	}
	fds := make([]uintptr, len(x.child))
	for n, f := range x.child {
		fds[n] = f.Fd()
	}
	pid, exited, err := r.spawn(func() (int, error) {
		return startProcess(proc, req.Args, path, env, cwd, fds, groups, req.TTY)
	})
	x.closeChild() // the child's now
	if err != nil {
		x.closeParent()
		return err
	}
	defer x.closeParent()
	if err := c.Write(agent.ExecStarted, agent.Uint32s(uint32(pid))); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		<-exited
		return err
	}

	go func() {
		buf := make([]byte, agent.MaxExecPayload)
		for {
			t, p, err := c.Read(buf)
			if err != nil {
				x.closeStdin()
				return
			}
			switch t {
			case agent.ExecStdin:
				if x.stdin != nil {
					_, _ = x.stdin.Write(p)
				}
			case agent.ExecStdinEOF:
				x.closeStdin()
			case agent.ExecResize:
				if rows, cols, err := agent.ParseResize(p); err == nil && x.ptmx != nil {
					_ = pty.Setsize(x.ptmx, &pty.Winsize{Rows: rows, Cols: cols})
				}
			case agent.ExecSignal:
				if v, err := agent.ParseUint32s(p, 1); err == nil && v[0] > 0 && v[0] < 65 {
					_ = unix.Kill(pid, unix.Signal(v[0]))
				}
			}
		}
	}()

	var outWG sync.WaitGroup
	for n, rd := range x.outs {
		t := agent.ExecStdout
		if n == 1 {
			t = agent.ExecStderr
		}
		outWG.Add(1)
		go func() {
			defer outWG.Done()
			buf := make([]byte, agent.MaxExecPayload)
			for {
				k, err := rd.Read(buf)
				if k > 0 {
					if c.Write(t, buf[:k]) != nil {
						return
					}
				}
				if err != nil {
					// EOF on a pipe, EIO on a pty whose last slave
					// closed, or closed after the drain timeout.
					return
				}
			}
		}()
	}
	ws := <-exited
	drained := make(chan struct{})
	go func() { outWG.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(execDrainTimeout):
		for _, rd := range x.outs {
			rd.Close()
		}
		<-drained
	}
	code, sig := Status(ws)
	return c.Write(agent.ExecExit, agent.Uint32s(uint32(code), uint32(sig)))
}
