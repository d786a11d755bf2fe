package nitrocli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/enclave"
)

// Defaults for Config fields left zero.
const (
	DefaultBinary       = "nitro-cli"
	DefaultPollInterval = 5 * time.Second
	DefaultDialTimeout  = 30 * time.Second
	// DefaultCleanupWait bounds the search for an enclave that a cancelled
	// boot left booting: nitro-cli's own heartbeat wait is at least two
	// minutes (v1.5 calculate_necessary_timeout).
	DefaultCleanupWait = 2 * time.Minute
	DefaultCleanupPoll = time.Second
	// DefaultRetryDelay is the pause before the one retry of a boot that
	// lost the heartbeat port to another boot.
	DefaultRetryDelay  = time.Second
	DefaultGiveUpAfter = time.Minute
)

// Runner runs nitro-cli. The default runs the binary; tests substitute a
// fake because nitro-cli cannot run without Nitro hardware.
type Runner interface {
	// Output runs the command to completion and returns its stdout and stderr.
	Output(ctx context.Context, args []string) (stdout, stderr []byte, err error)
	// Stream starts a long-running command (the console) writing its stdout
	// to w; stop ends it and waits.
	Stream(args []string, w io.Writer) (stop func(), err error)
}

// Config configures the backend.
type Config struct {
	// Binary is the nitro-cli executable (default DefaultBinary, from PATH).
	Binary string
	// PollInterval is how often describe-enclaves is asked whether the
	// enclave still runs (default DefaultPollInterval). With StateDir set,
	// all launchers of the node share one describe-enclaves call per
	// PollInterval.
	PollInterval time.Duration
	// StateDir is a root-only node directory shared by every launcher
	// (the shim's run_dir): it holds the boot lock and the shared
	// describe-enclaves answer. "" serialises and shares nothing (tests).
	StateDir string
	// Cgroup is the node-level cgroup nitro-cli and its enclave processes
	// run in, relative to each hierarchy's root (default DefaultCgroup).
	Cgroup string
	// CgroupRoot is where the cgroup hierarchies are mounted (default
	// DefaultCgroupRoot).
	CgroupRoot string
	// KeepCgroup runs nitro-cli in the caller's cgroup instead (tests that
	// cannot create cgroups; not for Nitro nodes).
	KeepCgroup bool
	// CleanupWait bounds how long a cancelled boot waits for run-enclave,
	// and then looks for the enclave it may have left (default
	// DefaultCleanupWait); CleanupPoll is the look's interval.
	CleanupWait time.Duration
	CleanupPoll time.Duration
	// RetryDelay is the pause before retrying a boot that failed with
	// nitro-cli's vsock bind error (default DefaultRetryDelay).
	RetryDelay time.Duration
	// GiveUpAfter is how long describe-enclaves may fail, or answer
	// without telling about this enclave, before the enclave is taken for
	// stopped (default DefaultGiveUpAfter).
	GiveUpAfter time.Duration
	// DialTimeout bounds how long Dial waits for init to connect to the
	// agent channel port (default DefaultDialTimeout).
	DialTimeout time.Duration
	// Runner runs nitro-cli (default: exec of Binary).
	Runner Runner
	// ListenVsock binds the agent channel port on the host (default: a
	// vsock listener on every CID; see channel.go).
	ListenVsock func(port uint32) (net.Listener, error)
	// NewCID picks the CID of an enclave whose request names none (default:
	// random, see channel.go).
	NewCID func() (uint32, error)
	// Logf logs refused connections to an agent channel port (default
	// log.Printf).
	Logf func(format string, args ...any)
}

// Backend boots enclaves with nitro-cli.
type Backend struct {
	cfg Config
}

var _ enclave.Backend = (*Backend)(nil)

// New returns a nitro-cli backend.
func New(cfg Config) *Backend {
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.CleanupWait <= 0 {
		cfg.CleanupWait = DefaultCleanupWait
	}
	if cfg.CleanupPoll <= 0 {
		cfg.CleanupPoll = DefaultCleanupPoll
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	if cfg.GiveUpAfter <= 0 {
		cfg.GiveUpAfter = DefaultGiveUpAfter
	}
	if cfg.Runner == nil {
		r := execRunner{bin: cfg.Binary}
		if !cfg.KeepCgroup {
			r.cg = &nodeCgroup{root: cfg.CgroupRoot, path: strings.TrimPrefix(cfg.Cgroup, "/")}
			if r.cg.root == "" {
				r.cg.root = DefaultCgroupRoot
			}
			if r.cg.path == "" {
				r.cg.path = DefaultCgroup
			}
		}
		cfg.Runner = r
	}
	if cfg.ListenVsock == nil {
		cfg.ListenVsock = listenVsock
	}
	if cfg.NewCID == nil {
		cfg.NewCID = randomCID
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	return &Backend{cfg: cfg}
}

// RunInfo is nitro-cli run-enclave's JSON output.
type RunInfo struct {
	EnclaveName  string `json:"EnclaveName"`
	EnclaveID    string `json:"EnclaveID"`
	ProcessID    int    `json:"ProcessID"`
	EnclaveCID   uint64 `json:"EnclaveCID"`
	NumberOfCPUs int    `json:"NumberOfCPUs"`
	CPUIDs       []int  `json:"CPUIDs"`
	MemoryMiB    int    `json:"MemoryMiB"`
}

// DescribeInfo is one element of nitro-cli describe-enclaves' JSON array.
type DescribeInfo struct {
	EnclaveName  string `json:"EnclaveName"`
	EnclaveID    string `json:"EnclaveID"`
	ProcessID    int    `json:"ProcessID"`
	EnclaveCID   uint64 `json:"EnclaveCID"`
	NumberOfCPUs int    `json:"NumberOfCPUs"`
	CPUIDs       []int  `json:"CPUIDs"`
	MemoryMiB    int    `json:"MemoryMiB"`
	// State is "RUNNING", "TERMINATING" or "EMPTY".
	State string `json:"State"`
	// Flags is "DEBUG_MODE" or "NONE".
	Flags        string            `json:"Flags"`
	Measurements map[string]string `json:"Measurements,omitempty"`
}

// TerminateInfo is nitro-cli terminate-enclave's JSON output.
type TerminateInfo struct {
	EnclaveName string `json:"EnclaveName"`
	EnclaveID   string `json:"EnclaveID"`
	Terminated  bool   `json:"Terminated"`
}

// States and flags nitro-cli reports.
const (
	StateRunning     = "RUNNING"
	StateTerminating = "TERMINATING"
	FlagsDebug       = "DEBUG_MODE"
)

// CommandError is a failed nitro-cli command with what it printed.
type CommandError struct {
	Args   []string
	Err    error
	Stderr string
}

func (e *CommandError) Error() string {
	msg := Summary(e.Stderr)
	if msg == "" {
		msg = "no error output"
	}
	return fmt.Sprintf("nitro-cli %s: %v: %s", strings.Join(e.Args, " "), e.Err, msg)
}

func (e *CommandError) Unwrap() error { return e.Err }

// Summary extracts the "[ Exx ] message" line from nitro-cli's error output
// (its documented error format), or the last non-empty line.
func Summary(stderr string) string {
	var last string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[ E") {
			return l
		}
		if l != "" {
			last = l
		}
	}
	return last
}

// RunArgs returns the nitro-cli arguments that boot req; eifSize is the EIF
// file size, for the memory check nitro-cli would make (a clearer message,
// earlier).
func RunArgs(req enclave.Request, eifSize int64) ([]string, error) {
	if req.EIFPath == "" {
		return nil, errors.New("enclave request has no EIF path")
	}
	if req.CPUs < 1 {
		return nil, fmt.Errorf("enclave needs at least 1 vCPU, got %d", req.CPUs)
	}
	if len(req.CPUIDs) > 0 && len(req.CPUIDs) != req.CPUs {
		return nil, fmt.Errorf("enclave asks for %d vCPUs but names %d CPU ids %v", req.CPUs, len(req.CPUIDs), req.CPUIDs)
	}
	if err := checkMemory(req.MemoryMiB, eifSize); err != nil {
		return nil, err
	}
	if req.CID != 0 && (req.CID <= 3 || req.CID == 0xFFFFFFFF) {
		return nil, fmt.Errorf("enclave CID %d is reserved (0-3 and 4294967295): use 16 or more, or 0 to let nitro-cli choose", req.CID)
	}
	args := []string{"run-enclave", "--eif-path", req.EIFPath, "--memory", strconv.Itoa(req.MemoryMiB)}
	if len(req.CPUIDs) > 0 {
		args = append(args, "--cpu-ids")
		for _, id := range req.CPUIDs {
			args = append(args, strconv.Itoa(id))
		}
	} else {
		args = append(args, "--cpu-count", strconv.Itoa(req.CPUs))
	}
	if req.CID != 0 {
		args = append(args, "--enclave-cid", strconv.FormatUint(uint64(req.CID), 10))
	}
	if req.Name != "" {
		args = append(args, "--enclave-name", req.Name)
	}
	if req.Debug {
		args = append(args, "--debug-mode")
	}
	return args, nil
}

// checkMemory applies nitro-cli's rule (memory ≥ 4× the EIF size, ≥ 64 MiB).
func checkMemory(memMiB int, eifSize int64) error {
	need := max((4*eifSize+1<<20-1)>>20, nitropod.MinEnclaveMemoryMiB)
	if int64(memMiB) < need {
		return fmt.Errorf("enclave memory %d MiB is too small for a %.1f MiB EIF: nitro-cli needs at least 4× the EIF size and at least %d MiB, so give it at least %d MiB",
			memMiB, float64(eifSize)/(1<<20), nitropod.MinEnclaveMemoryMiB, need)
	}
	return nil
}

// ParseRun decodes run-enclave's output.
func ParseRun(stdout []byte) (*RunInfo, error) {
	var ri RunInfo
	if err := decodeJSON(stdout, '{', &ri); err != nil {
		return nil, fmt.Errorf("parsing nitro-cli run-enclave output: %w", err)
	}
	if ri.EnclaveID == "" || ri.EnclaveCID == 0 {
		return nil, fmt.Errorf("parsing nitro-cli run-enclave output: no EnclaveID or EnclaveCID in %q", bytes.TrimSpace(stdout))
	}
	if ri.EnclaveCID > 0xFFFFFFFF {
		return nil, fmt.Errorf("parsing nitro-cli run-enclave output: EnclaveCID %d does not fit in 32 bits", ri.EnclaveCID)
	}
	return &ri, nil
}

// ParseDescribe decodes describe-enclaves' output (a JSON array).
func ParseDescribe(stdout []byte) ([]DescribeInfo, error) {
	var ds []DescribeInfo
	if err := decodeJSON(stdout, '[', &ds); err != nil {
		return nil, fmt.Errorf("parsing nitro-cli describe-enclaves output: %w", err)
	}
	return ds, nil
}

// ParseTerminate decodes terminate-enclave's output.
func ParseTerminate(stdout []byte) (*TerminateInfo, error) {
	var ti TerminateInfo
	if err := decodeJSON(stdout, '{', &ti); err != nil {
		return nil, fmt.Errorf("parsing nitro-cli terminate-enclave output: %w", err)
	}
	return &ti, nil
}

// decodeJSON decodes the JSON value of out that starts a line with open
// ('{' or '['). nitro-cli prints only JSON on stdout, but be lenient about
// progress text before it (older versions).
func decodeJSON(out []byte, open byte, v any) error {
	for off := 0; off < len(out); {
		line := out[off:]
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line = line[:i+1]
		}
		if t := bytes.TrimLeft(line, " \t\r"); len(t) > 0 && t[0] == open {
			return json.NewDecoder(bytes.NewReader(out[off:])).Decode(v)
		}
		off += len(line)
	}
	return fmt.Errorf("no JSON in %q", truncate(out))
}

func truncate(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// bootCLI runs nitro-cli run-enclave (which returns after the enclave's boot
// heartbeat), starts the console when Debug and Console are set, and watches
// the enclave with describe-enclaves. Boot (channel.go) wraps it.
func (b *Backend) bootCLI(ctx context.Context, req enclave.Request) (*nitroEnclave, error) {
	fi, err := os.Stat(req.EIFPath)
	if err != nil {
		return nil, fmt.Errorf("booting enclave: %w", err)
	}
	args, err := RunArgs(req, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("booting enclave: %w", err)
	}
	unlock, err := b.lockBoot(ctx)
	if err != nil {
		return nil, fmt.Errorf("booting enclave: %w", err)
	}
	ri, err := b.runEnclave(ctx, req.Name, args)
	unlock()
	if err != nil {
		return nil, fmt.Errorf("booting enclave: %w", err)
	}
	e := &nitroEnclave{b: b, info: *ri, booted: time.Now(), done: make(chan struct{}), stop: make(chan struct{})}
	if req.Debug && req.Console != nil {
		stop, err := b.cfg.Runner.Stream([]string{"console", "--enclave-id", ri.EnclaveID}, req.Console)
		if err != nil {
			_ = e.Terminate(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("booting enclave: attaching console: %w", err)
		}
		e.stopConsole = stop
	}
	go e.watch()
	return e, nil
}

type nitroEnclave struct {
	b           *Backend
	info        RunInfo
	booted      time.Time
	done        chan struct{}
	doneOnce    sync.Once
	stop        chan struct{}
	stopOnce    sync.Once
	stopConsole func()
	dialed      atomic.Bool
	termOnce    sync.Once
	termErr     error
}

func (e *nitroEnclave) ID() string  { return e.info.EnclaveID }
func (e *nitroEnclave) CID() uint32 { return uint32(e.info.EnclaveCID) }

func (e *nitroEnclave) Done() <-chan struct{} { return e.done }

// watch polls describe-enclaves until the enclave is gone or stopping. It
// acts only on an answer that shows this enclave not RUNNING, or that
// lists every enclave (exit 0) and not this one: when some other enclave
// process fails to answer, nitro-cli still prints the others but exits
// non-zero, and that must not end this enclave.
func (e *nitroEnclave) watch() {
	t := time.NewTicker(e.b.cfg.PollInterval)
	defer t.Stop()
	var failingSince time.Time
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r := e.b.pollDescribe(ctx, e.booted)
		cancel()
		d, found := find(r.Enclaves, e.info.EnclaveID)
		switch {
		case r.Err == nil && found && d.State == StateRunning:
			failingSince = time.Time{}
			continue
		case r.Err == nil && (found || r.Complete):
			e.markDone() // not RUNNING, or really absent
			return
		}
		// No answer, or one that cannot tell (this enclave's own process
		// may be the one that did not answer): a broken nitro-cli must not
		// make a running enclave look stopped at once; give up after
		// GiveUpAfter of such answers.
		if failingSince.IsZero() {
			failingSince = time.Now()
		} else if time.Since(failingSince) >= e.b.cfg.GiveUpAfter {
			e.markDone()
			return
		}
	}
}

func find(ds []DescribeInfo, id string) (DescribeInfo, bool) {
	for _, d := range ds {
		if d.EnclaveID == id {
			return d, true
		}
	}
	return DescribeInfo{}, false
}

func (e *nitroEnclave) markDone() {
	e.doneOnce.Do(func() {
		if e.stopConsole != nil {
			e.stopConsole()
		}
		close(e.done)
	})
}

// Terminate runs terminate-enclave. An enclave that describe-enclaves no
// longer lists counts as terminated.
func (e *nitroEnclave) Terminate(ctx context.Context) error {
	e.termOnce.Do(func() {
		e.stopOnce.Do(func() { close(e.stop) })
		e.termErr = e.b.TerminateID(ctx, e.info.EnclaveID)
		e.markDone()
	})
	return e.termErr
}

// Describe runs describe-enclaves.
func (b *Backend) Describe(ctx context.Context) ([]DescribeInfo, error) {
	args := []string{"describe-enclaves"}
	out, stderr, err := b.cfg.Runner.Output(ctx, args)
	if err != nil {
		return nil, &CommandError{Args: args, Err: err, Stderr: string(stderr)}
	}
	return ParseDescribe(out)
}

// TerminateID terminates the enclave with nitro-cli EnclaveID id, e.g. one
// recorded by a launcher that is gone. An enclave that describe-enclaves does
// not list counts as terminated.
func (b *Backend) TerminateID(ctx context.Context, id string) error {
	args := []string{"terminate-enclave", "--enclave-id", id}
	out, stderr, err := b.cfg.Runner.Output(ctx, args)
	if err != nil {
		if ds, derr := b.Describe(ctx); derr == nil && !listed(ds, id) {
			return nil
		}
		return fmt.Errorf("terminating enclave: %w", &CommandError{Args: args, Err: err, Stderr: string(stderr)})
	}
	ti, err := ParseTerminate(out)
	if err != nil {
		return fmt.Errorf("terminating enclave: %w", err)
	}
	if !ti.Terminated || ti.EnclaveID != id {
		return fmt.Errorf("terminating enclave %s: nitro-cli answered %+v", id, *ti)
	}
	return nil
}

func listed(ds []DescribeInfo, id string) bool {
	for _, d := range ds {
		if d.EnclaveID == id {
			return true
		}
	}
	return false
}

// execRunner runs the real nitro-cli, in the node-level cgroup cg (nil:
// the caller's).
type execRunner struct {
	bin string
	cg  *nodeCgroup
}

// commandEnv is nitro-cli's environment for subcommand cmd. describe-enclaves
// runs with RUST_LOG=warn: nitro-cli logs every command at info level to
// /var/log/nitro_enclaves/nitro_enclaves.log and RUST_LOG sets that level
// (v1.5 src/common/logger.rs); the launchers' polling would fill it.
// run-enclave runs with BACKTRACE=1 so that its error output names the
// failure under the E36 code (src/common/mod.rs construct_error_message).
func commandEnv(cmd string) []string {
	env := os.Environ()
	switch cmd {
	case "describe-enclaves":
		env = append(env, "RUST_LOG=warn")
	case "run-enclave":
		env = append(env, "BACKTRACE=1")
	}
	return env
}

func (r execRunner) Output(ctx context.Context, args []string) ([]byte, []byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, r.bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = commandEnv(args[0])
	if err := r.cg.start(cmd); err != nil {
		return nil, nil, &notStartedError{err}
	}
	err := cmd.Wait()
	return stdout.Bytes(), stderr.Bytes(), err
}

func (r execRunner) Stream(args []string, w io.Writer) (func(), error) {
	cmd := exec.Command(r.bin, args...)
	cmd.Stdout = w
	cmd.Env = commandEnv(args[0])
	if err := r.cg.start(cmd); err != nil {
		return nil, err
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-waited
		})
	}, nil
}
