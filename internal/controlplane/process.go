package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Process is a started binary whose output goes to Log.
type Process struct {
	// Name names the process in errors and its log file (LOGDIR/NAME.log).
	Name string
	// Log is the path of its output (appended to, so a restart keeps the
	// earlier lines).
	Log string

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartProcess runs argv[0] with argv[1:] and env added to this process's
// environment; its stdout and stderr are appended to logDir/NAME.log. On
// Linux the child gets its own process group and dies with its parent.
func StartProcess(logDir, name string, env []string, bin string, args ...string) (*Process, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log of %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Stop sends SIGTERM, waits up to grace, then kills. A nil Process or one
// that has ended is left alone.
func (p *Process) Stop(grace time.Duration) {
	if p == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Exited reports whether the process has ended, and its error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// WaitReady polls ready every 200ms until it returns nil. It fails when ctx
// ends (with ready's last error) or the process exits (with its log's tail).
func (p *Process) WaitReady(ctx context.Context, ready func() error) error {
	return Poll(ctx, 200*time.Millisecond, func() error {
		if done, err := p.Exited(); done {
			return Permanent(fmt.Errorf("%s exited (%w); see %s:\n%s", p.Name, err, p.Log, Tail(p.Log, 20)))
		}
		return ready()
	})
}

type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// Permanent marks an error that ends a Poll at once.
func Permanent(err error) error { return permanent{err} }

// Poll calls fn every interval until it returns nil or a Permanent error
// (returned unwrapped), or ctx ends (an error wrapping fn's last one).
func Poll(ctx context.Context, interval time.Duration, fn func() error) error {
	for {
		last := fn()
		if last == nil {
			return nil
		}
		var stop permanent
		if errors.As(last, &stop) {
			return stop.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// Tail returns the last n lines of the file at path ("" if unreadable).
func Tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
