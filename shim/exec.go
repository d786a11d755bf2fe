package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/protobuf"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/shim/launcher"
)

// Execs of enclave containers: containerd's Exec records the process,
// Start asks the container's launcher (launcher.DialExec), which asks
// init inside the enclave over the agent channel. The process runs with
// the app's measured environment, user, working directory and security
// context; of the exec's OCI process only its args, terminal and console
// size are used. A production enclave runs only the commands it was
// measured with and refuses the rest (init decides: the node is not
// trusted to); the refusal is Start's error.

// maxExecsPerTask bounds the exec records one container keeps.
const maxExecsPerTask = 256

// ExecStartTimeout bounds how long Start of an exec waits for the enclave.
var ExecStartTimeout = 2 * time.Minute

type execProcess struct {
	id   string
	spec launcher.ExecSpec

	mu         sync.Mutex
	status     taskStatus
	pid        int
	client     *launcher.ExecClient
	exited     chan struct{}
	exitStatus int
	exitedAt   time.Time
}

func (t *enclaveTask) exec(id string) (*execProcess, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.execs[id]; p != nil {
		return p, nil
	}
	return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s not found in container %s", id, t.id)
}

// addExec records an exec (containerd's Exec).
func (t *enclaveTask) addExec(r *taskAPI.ExecProcessRequest) error {
	if r.ExecID == "" {
		return errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "exec id is empty")
	}
	if r.Spec == nil {
		return errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "exec %s has no process spec", r.ExecID)
	}
	var ps specs.Process
	if err := json.Unmarshal(r.Spec.GetValue(), &ps); err != nil {
		return errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "decoding the process spec of exec %s: %v", r.ExecID, err)
	}
	spec := launcher.ExecSpec{ID: r.ExecID, Args: ps.Args, Terminal: r.Terminal || ps.Terminal, Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr}
	if ps.ConsoleSize != nil && ps.ConsoleSize.Height <= 0xffff && ps.ConsoleSize.Width <= 0xffff {
		spec.Rows, spec.Cols = uint16(ps.ConsoleSize.Height), uint16(ps.ConsoleSize.Width)
	}
	if err := launcher.CheckExecSpec(spec); err != nil {
		return errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "exec %s: %v", r.ExecID, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.status != statusRunning:
		return errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s is not running: exec needs a running enclave", t.id)
	case t.execs[r.ExecID] != nil:
		return errdefs.ToGRPCf(errdefs.ErrAlreadyExists, "exec %s already exists in container %s", r.ExecID, t.id)
	case len(t.execs) >= maxExecsPerTask:
		return errdefs.ToGRPCf(errdefs.ErrResourceExhausted, "container %s has %d execs, the most the shim keeps: delete finished ones", t.id, len(t.execs))
	}
	if t.execs == nil {
		t.execs = map[string]*execProcess{}
	}
	t.execs[r.ExecID] = &execProcess{id: r.ExecID, spec: spec, exited: make(chan struct{})}
	return nil
}

// startExec runs a recorded exec in the enclave and returns once init
// started it, or with init's refusal or failure.
func (t *enclaveTask) startExec(s *service, p *execProcess) (int, error) {
	p.mu.Lock()
	if p.status != statusCreated || p.client != nil {
		p.mu.Unlock()
		return 0, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %s was already started", p.id)
	}
	p.status = statusRunning // until the outcome is known: no second Start
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(s.ctx, ExecStartTimeout)
	defer cancel()
	c, err := launcher.DialExec(ctx, t.bundle, p.spec)
	if err != nil {
		t.failExec(p)
		return 0, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %s in container %s: %v", p.id, t.id, err)
	}
	first := make(chan launcher.ExecMsg, 1)
	go func() {
		m, err := c.Recv()
		if err != nil {
			m = launcher.ExecMsg{Type: launcher.ExecMsgError, Error: "the launcher ended the exec before it started: " + err.Error()}
		}
		first <- m
	}()
	var m launcher.ExecMsg
	select {
	case m = <-first:
	case <-ctx.Done():
		c.Close()
		t.failExec(p)
		return 0, errdefs.ToGRPCf(errdefs.ErrUnavailable, "exec %s in container %s: the enclave did not start it within %v", p.id, t.id, ExecStartTimeout)
	}
	if m.Type != launcher.ExecMsgStarted {
		c.Close()
		t.failExec(p)
		msg := m.Error
		if msg == "" {
			msg = fmt.Sprintf("unexpected %q from the launcher", m.Type)
		}
		return 0, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "%s", msg)
	}
	p.mu.Lock()
	p.pid = m.Pid
	p.client = c
	// Published before the exec's TaskExit, which the goroutine below sends.
	s.send(&eventstypes.TaskExecStarted{ContainerID: t.id, ExecID: p.id, Pid: uint32(m.Pid)})
	p.mu.Unlock()
	go t.waitExec(s, p, c)
	return m.Pid, nil
}

// failExec marks an exec that never started as stopped.
func (t *enclaveTask) failExec(p *execProcess) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status = statusStopped
	p.exitStatus = 255
	p.exitedAt = time.Now()
	close(p.exited)
}

func (t *enclaveTask) waitExec(s *service, p *execProcess, c *launcher.ExecClient) {
	defer c.Close()
	status := 128 + 9 // the launcher went away: the enclave is gone
	for {
		m, err := c.Recv()
		if err != nil {
			break
		}
		if m.Type == launcher.ExecMsgExit {
			status = m.Code
			break
		}
	}
	at := time.Now()
	p.mu.Lock()
	p.status = statusStopped
	p.exitStatus = status
	p.exitedAt = at
	s.send(&eventstypes.TaskExit{
		ContainerID: t.id,
		ID:          p.id,
		Pid:         uint32(p.pid),
		ExitStatus:  uint32(status),
		ExitedAt:    protobuf.ToTimestamp(at),
	})
	close(p.exited)
	p.mu.Unlock()
}

// send passes a message to a running exec's launcher connection.
func (p *execProcess) send(m launcher.ExecMsg) error {
	p.mu.Lock()
	c, st := p.client, p.status
	p.mu.Unlock()
	if c == nil || st != statusRunning {
		return errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s is not running", p.id)
	}
	if err := c.Send(m); err != nil {
		return errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s: %v", p.id, err)
	}
	return nil
}

func (p *execProcess) kill(sig uint32) error {
	if sig == 0 || sig > 64 {
		return errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "signal %d", sig)
	}
	select {
	case <-p.exited:
		return errdefs.ToGRPCf(errdefs.ErrNotFound, "process already finished")
	default:
	}
	return p.send(launcher.ExecMsg{Type: launcher.ExecMsgSignal, Signal: int(sig)})
}

func (p *execProcess) wait(ctx context.Context) (*taskAPI.WaitResponse, error) {
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, errdefs.ToGRPC(ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &taskAPI.WaitResponse{ExitStatus: uint32(p.exitStatus), ExitedAt: protobuf.ToTimestamp(p.exitedAt)}, nil
}

func (p *execProcess) state(t *enclaveTask) *taskAPI.StateResponse {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := task.Status_CREATED
	switch p.status {
	case statusRunning:
		st = task.Status_RUNNING
		if p.client == nil {
			st = task.Status_CREATED // starting
		}
	case statusStopped:
		st = task.Status_STOPPED
	}
	return &taskAPI.StateResponse{
		ID:         p.id,
		Bundle:     t.bundle,
		Pid:        uint32(p.pid),
		Status:     st,
		Stdin:      p.spec.Stdin,
		Stdout:     p.spec.Stdout,
		Stderr:     p.spec.Stderr,
		Terminal:   p.spec.Terminal,
		ExitStatus: uint32(p.exitStatus),
		ExitedAt:   protobuf.ToTimestamp(p.exitedAt),
		ExecID:     p.id,
	}
}

// deleteExec forgets a finished (or never started) exec.
func (t *enclaveTask) deleteExec(p *execProcess) (*taskAPI.DeleteResponse, error) {
	p.mu.Lock()
	running := p.status == statusRunning
	pid, status, at := p.pid, p.exitStatus, p.exitedAt
	p.mu.Unlock()
	if running {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %s is still running: kill it first", p.id)
	}
	t.mu.Lock()
	delete(t.execs, p.id)
	t.mu.Unlock()
	return &taskAPI.DeleteResponse{Pid: uint32(pid), ExitStatus: uint32(status), ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// closeExecs drops the launcher connections of every exec (Delete of the
// container).
func (t *enclaveTask) closeExecs() {
	t.mu.Lock()
	ps := make([]*execProcess, 0, len(t.execs))
	for _, p := range t.execs {
		ps = append(ps, p)
	}
	t.mu.Unlock()
	for _, p := range ps {
		p.mu.Lock()
		if p.client != nil {
			p.client.Close()
		}
		p.mu.Unlock()
	}
}
