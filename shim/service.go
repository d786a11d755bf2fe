package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/containerd/runtime/v2/runc"
	runctask "github.com/containerd/containerd/runtime/v2/runc/task"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/containerd/sys/reaper"
	runcC "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eifcache"
	"github.com/nitropod/nitropod/shim/launcher"
)

func init() {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return NewTaskService(ic.Context, ic.Address, pp.(shim.Publisher), ss.(shutdown.Service))
		},
	})
}

var empty = &ptypes.Empty{}

// service is the Pod's task service: enclave containers are handled here,
// every other container (the pause container, containers the webhook left
// out) by containerd's own runc task service, which it wraps.
type service struct {
	ctx     context.Context
	address string
	runc    taskAPI.TaskService
	sd      shutdown.Service
	events  chan interface{}
	// pending counts events sent and not yet published, so that Shutdown
	// does not end the shim with a TaskDelete still queued.
	pending sync.WaitGroup

	mu     sync.Mutex
	tasks  map[string]*enclaveTask // by container id
	byPid  map[int]*enclaveTask
	caches map[string]*eifcache.Cache // by dir
}

// NewTaskService wraps runc's task service with enclave containers.
// address is containerd's gRPC socket (for image configs).
func NewTaskService(ctx context.Context, address string, publisher shim.Publisher, sd shutdown.Service) (taskAPI.TaskService, error) {
	// Subscribe before anything can start a launcher.
	exits := reaper.Default.Subscribe()
	rs, err := runctask.NewTaskService(ctx, publisher, sd)
	if err != nil {
		return nil, err
	}
	s := &service{
		ctx:     ctx,
		address: address,
		runc:    rs,
		sd:      sd,
		events:  make(chan interface{}, 128),
		tasks:   map[string]*enclaveTask{},
		byPid:   map[int]*enclaveTask{},
		caches:  map[string]*eifcache.Cache{},
	}
	go s.forward(ctx, publisher)
	go s.processExits(exits)
	sd.RegisterCallback(func(context.Context) error {
		reaper.Default.Unsubscribe(exits)
		close(s.events)
		return nil
	})
	return s, nil
}

func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTaskService(server, s)
	return nil
}

func (s *service) send(evt interface{}) {
	s.pending.Add(1)
	s.events <- evt
}

func (s *service) forward(ctx context.Context, publisher shim.Publisher) {
	ns, _ := namespaces.Namespace(ctx)
	ctx = namespaces.WithNamespace(context.Background(), ns)
	for e := range s.events {
		if err := publisher.Publish(ctx, runc.GetTopic(e), e); err != nil {
			log.G(ctx).WithError(err).Error("post event")
		}
		s.pending.Done()
	}
}

func (s *service) processExits(exits chan runcC.Exit) {
	for e := range exits {
		s.mu.Lock()
		t := s.byPid[e.Pid]
		delete(s.byPid, e.Pid)
		s.mu.Unlock()
		if t != nil {
			t.handleExit(s, e.Status, e.Timestamp)
		}
	}
}

func (s *service) get(id string) *enclaveTask {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tasks[id]
}

// configPath takes the config path from the runtime options: runc's
// Options or containerd's generic runtimeoptions (what CRI sends for
// non-runc runtime types), then $NITROPOD_SHIM_CONFIG.
func configPath(opts *ptypes.Any) string {
	if opts != nil && opts.GetTypeUrl() != "" {
		if v, err := typeurl.UnmarshalAny(opts); err == nil {
			switch o := v.(type) {
			case *runtimeoptions.Options:
				if o.ConfigPath != "" {
					return o.ConfigPath
				}
			}
		}
	}
	return os.Getenv(ConfigEnv)
}

// runcOptions keeps runc's own options and drops any other type, which
// runc's service would not accept.
func runcOptions(opts *ptypes.Any) *ptypes.Any {
	if opts == nil || opts.GetTypeUrl() == "" {
		return nil
	}
	if v, err := typeurl.UnmarshalAny(opts); err == nil {
		if _, ok := v.(*options.Options); ok {
			return opts
		}
	}
	return nil
}

func readBundleSpec(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("reading bundle config: %w", err)
	}
	var sp specs.Spec
	if err := json.Unmarshal(b, &sp); err != nil {
		return nil, fmt.Errorf("parsing bundle config: %w", err)
	}
	return &sp, nil
}

// Create creates an enclave container, or hands any other to runc.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	spec, err := readBundleSpec(r.Bundle)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	cfg, err := LoadConfig(configPath(r.Options))
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	plan, err := PlanContainer(spec, cfg)
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	if plan.Enclave {
		if err := plan.InheritSandboxSysctls(spec, r.Bundle); err != nil {
			return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
		}
	}
	if !plan.Enclave {
		if r.Options, err = runcOptionsFor(r.Options, spec); err != nil {
			return nil, errdefs.ToGRPC(err)
		}
		return s.runc.Create(ctx, r)
	}
	if err := sizeEnclave(ctx, cfg, spec, &plan); err != nil {
		log.G(ctx).WithError(err).WithField("id", r.ID).Error("sizing the enclave")
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "%v", err)
	}
	if plan.PortsFromImage && spec.Annotations[nitropod.CRIImageName] != "" && s.address != "" {
		ns, _ := namespaces.Namespace(ctx)
		ports, err := imagePorts(ctx, cfg, s.address, ns, spec.Annotations[nitropod.CRIImageName])
		if err != nil {
			log.G(ctx).WithError(err).WithField("id", r.ID).Warn("reading the image's exposed ports; forwarding none")
		} else {
			plan.Ports, plan.Process.Ports = ports, ports
		}
	}
	s.mu.Lock()
	if _, ok := s.tasks[r.ID]; ok {
		s.mu.Unlock()
		return nil, errdefs.ToGRPCf(errdefs.ErrAlreadyExists, "container %s already exists", r.ID)
	}
	s.mu.Unlock()
	t, err := s.createEnclave(ctx, r, spec, plan, cfg)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", r.ID).Error("creating enclave container")
		return nil, errdefs.ToGRPC(err)
	}
	s.send(&eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         uint32(t.pid),
	})
	return &taskAPI.CreateTaskResponse{Pid: uint32(t.pid)}, nil
}

func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	t := s.get(r.ID)
	if t == nil {
		return s.runc.Start(ctx, r)
	}
	if r.ExecID != "" {
		return nil, notSupported("exec")
	}
	if err := t.start(s); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &taskAPI.StartResponse{Pid: uint32(t.pid)}, nil
}

func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	t := s.get(r.ID)
	if t == nil {
		return s.runc.Delete(ctx, r)
	}
	if r.ExecID != "" {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s not found", r.ExecID)
	}
	status, exitedAt := t.delete(ctx)
	s.mu.Lock()
	delete(s.tasks, r.ID)
	s.mu.Unlock()
	s.send(&eventstypes.TaskDelete{
		ContainerID: r.ID,
		Pid:         uint32(t.pid),
		ExitStatus:  uint32(status),
		ExitedAt:    protobuf.ToTimestamp(exitedAt),
	})
	return &taskAPI.DeleteResponse{Pid: uint32(t.pid), ExitStatus: uint32(status), ExitedAt: protobuf.ToTimestamp(exitedAt)}, nil
}

func notSupported(what string) error {
	return errdefs.ToGRPCf(errdefs.ErrNotImplemented, "%s is not supported for enclave containers: the app runs inside an isolated enclave with no host-side process to act on", what)
}

func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	if s.get(r.ID) == nil {
		return s.runc.Exec(ctx, r)
	}
	return nil, notSupported("exec")
}

func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	if s.get(r.ID) == nil {
		return s.runc.ResizePty(ctx, r)
	}
	return empty, nil // no terminal: nothing to resize
}

func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	t := s.get(r.ID)
	if t == nil {
		return s.runc.State(ctx, r)
	}
	if r.ExecID != "" {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s not found", r.ExecID)
	}
	return t.state(), nil
}

func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	if s.get(r.ID) == nil {
		return s.runc.Pause(ctx, r)
	}
	return nil, notSupported("pause")
}

func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	if s.get(r.ID) == nil {
		return s.runc.Resume(ctx, r)
	}
	return nil, notSupported("resume")
}

func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	t := s.get(r.ID)
	if t == nil {
		return s.runc.Kill(ctx, r)
	}
	if r.ExecID != "" {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s not found", r.ExecID)
	}
	if err := t.kill(ctx, r.Signal); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return empty, nil
}

func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	t := s.get(r.ID)
	if t == nil {
		return s.runc.Pids(ctx, r)
	}
	return t.pids(), nil
}

func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	if s.get(r.ID) == nil {
		return s.runc.CloseIO(ctx, r)
	}
	return empty, nil // the launcher owns stdin; it sees EOF when the writer closes
}

func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	if s.get(r.ID) == nil {
		return s.runc.Checkpoint(ctx, r)
	}
	return nil, notSupported("checkpoint")
}

func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	t := s.get(r.ID)
	if t == nil {
		return s.runc.Update(ctx, r)
	}
	if err := t.update(ctx, r.Resources); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return empty, nil
}

func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	t := s.get(r.ID)
	if t == nil {
		return s.runc.Wait(ctx, r)
	}
	if r.ExecID != "" {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s not found", r.ExecID)
	}
	select {
	case <-t.exited:
	case <-ctx.Done():
		return nil, errdefs.ToGRPC(ctx.Err())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return &taskAPI.WaitResponse{ExitStatus: uint32(t.exitStatus), ExitedAt: protobuf.ToTimestamp(t.exitedAt)}, nil
}

func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	t := s.get(r.ID)
	if t == nil {
		return s.runc.Stats(ctx, r)
	}
	st, err := cgroupStats(t.cgroupsPath)
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "cgroup %s of enclave container %s: %v", t.cgroupsPath, r.ID, err)
	}
	if rec, err := launcher.ReadStats(t.bundle); err == nil {
		st = withEnclaveStats(st, rec, time.Now())
	} else if !errors.Is(err, fs.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("reading the enclave's stats")
	}
	data, err := typeurl.MarshalAny(st)
	if err != nil {
		return nil, err
	}
	return &taskAPI.StatsResponse{Stats: protobuf.FromAny(data)}, nil
}

func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	t := s.get(r.ID)
	if t == nil {
		return s.runc.Connect(ctx, r)
	}
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: uint32(t.pid)}, nil
}

// Shutdown is ignored while the shim still serves a container of the Pod.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.mu.Lock()
	n := len(s.tasks)
	s.mu.Unlock()
	if n > 0 {
		return empty, nil
	}
	// Publish what is queued (the last TaskDelete) before the shim goes;
	// Publish is synchronous, bounded by its own 5 s timeout per event.
	done := make(chan struct{})
	go func() { s.pending.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		log.G(ctx).Warn("shutting down with events still unpublished")
	}
	// runc's Shutdown checks its own containers and then shuts the shim down.
	return s.runc.Shutdown(ctx, r)
}
