package deviceplugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nitropod/nitropod"

	"github.com/nitropod/nitropod/contract"
)

// KubeletSocketName is kubelet's registration socket in the plugin dir.
const KubeletSocketName = "kubelet.sock"

// registerSettle is the quiet time after a kick before registering.
const registerSettle = 50 * time.Millisecond

// DefaultRescanInterval is how often sysfs, the device node, the sockets and
// the config file are checked (sysfs files cannot be watched).
const DefaultRescanInterval = 5 * time.Second

// Options configure Run. Every path is a parameter so tests use temporary
// directories.
type Options struct {
	// Roots are the sysfs and /dev roots.
	Roots Roots
	// PluginDir is kubelet's device plugin directory, where kubelet.sock
	// and the plugin's sockets live.
	PluginDir string
	// ConfigPath is the configuration file; a missing file means defaults.
	ConfigPath string
	// MetricsAddr is the listen address of /metrics and /healthz; empty
	// disables them.
	MetricsAddr string
	// RescanInterval defaults to DefaultRescanInterval.
	RescanInterval time.Duration
	// Log receives the plugin's log; nil discards it.
	Log logrus.FieldLogger
	// Ready, if set, is called with the metrics listener's address once the
	// plugin serves (tests use it with MetricsAddr "127.0.0.1:0").
	Ready func(metricsAddr string)
}

// SocketName is the file name of resource's plugin socket in the plugin
// dir: "nitropod-enclave-cpu.sock" for nitropod.io/enclave-cpu.
func SocketName(resource string) string {
	return "nitropod-" + strings.TrimPrefix(resource, nitropod.AnnotationPrefix) + ".sock"
}

// Run discovers the node, serves the three resources, registers them with
// kubelet and keeps them registered until ctx ends: it re-registers when
// kubelet.sock is recreated (a kubelet restart), recreates its own sockets
// when kubelet deletes them, reloads the config file when it changes and
// rescans sysfs for health. It removes its sockets before returning.
func Run(ctx context.Context, o Options) error {
	if o.Log == nil {
		l := logrus.New()
		l.Out = io.Discard
		o.Log = l
	}
	if o.RescanInterval <= 0 {
		o.RescanInterval = DefaultRescanInterval
	}
	r := &runner{o: o, log: o.Log, m: newMetrics()}
	r.st = newState(o.Log, r.m)
	if err := r.reload(true); err != nil {
		return err
	}
	if err := os.MkdirAll(o.PluginDir, 0o750); err != nil {
		return fmt.Errorf("creating device plugin dir: %w", err)
	}
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching device plugin dir: %w", err)
	}
	defer watcher.Close()
	if err := watcher.Add(o.PluginDir); err != nil {
		return fmt.Errorf("watching device plugin dir: %w", err)
	}
	if o.ConfigPath != "" {
		// The file may not exist yet; its directory may not either, in which
		// case the rescan tick notices a new file.
		_ = watcher.Add(filepath.Dir(o.ConfigPath))
	}

	// Goroutines end when ctx does; every return path cancels, then waits.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	for _, res := range Resources {
		srv := &resourceServer{resource: res, dir: o.PluginDir, st: r.st, log: o.Log.WithField("resource", res), m: r.m,
			kick: make(chan struct{}, 1)}
		r.servers = append(r.servers, srv)
		if err := srv.start(); err != nil {
			r.stopAll()
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); srv.registrar(ctx) }()
	}
	defer r.stopAll()

	metricsAddr := ""
	if o.MetricsAddr != "" {
		ln, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			return fmt.Errorf("listening for metrics on %s: %w", o.MetricsAddr, err)
		}
		metricsAddr = ln.Addr().String()
		hs := &http.Server{Handler: r.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
		wg.Add(1)
		go func() { defer wg.Done(); _ = hs.Serve(ln) }()
		defer hs.Close()
	}
	r.kickAll()
	o.Log.WithFields(logrus.Fields{"plugin_dir": o.PluginDir, "metrics": metricsAddr}).Info("device plugin serving")
	if o.Ready != nil {
		o.Ready(metricsAddr)
	}

	tick := time.NewTicker(o.RescanInterval)
	defer tick.Stop()
	reloadAt := time.NewTimer(time.Hour)
	reloadAt.Stop()
	for {
		select {
		case <-ctx.Done():
			o.Log.Info("device plugin stopping")
			return nil
		case err, ok := <-watcher.Errors:
			if ok {
				o.Log.WithError(err).Warn("watching files")
			}
		case ev, ok := <-watcher.Events:
			if !ok {
				continue
			}
			r.event(ev, reloadAt)
		case <-reloadAt.C:
			if err := r.reload(false); err != nil {
				r.reloadFailed(err)
			}
		case <-tick.C:
			r.rescan()
		}
	}
}

type runner struct {
	o       Options
	log     logrus.FieldLogger
	m       *metrics
	st      *state
	servers []*resourceServer

	cfg       Config
	cfgData   []byte
	allocData []byte // allocator.yaml as last read, for SourceAllocator
	prev      Advertisement
}

// event handles one change in the plugin dir or the config dir.
func (r *runner) event(ev fsnotify.Event, reloadAt *time.Timer) {
	dir, name := filepath.Dir(ev.Name), filepath.Base(ev.Name)
	if dir == filepath.Clean(r.o.PluginDir) {
		switch {
		case name == KubeletSocketName && ev.Has(fsnotify.Create):
			r.log.Info("kubelet.sock created: kubelet (re)started, registering again")
			for _, s := range r.servers {
				s.setRegistered(false)
			}
			r.ensureSockets()
			r.kickAll()
			return
		case name == KubeletSocketName && ev.Has(fsnotify.Remove):
			r.log.Info("kubelet.sock removed: waiting for kubelet")
			for _, s := range r.servers {
				s.setRegistered(false)
			}
			return
		}
		for _, s := range r.servers {
			if name == SocketName(s.resource) && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
				// The file is back already when the plugin restarted this
				// server itself; otherwise someone (kubelet) removed it.
				restarted, err := s.ensure()
				if err != nil {
					s.log.WithError(err).Error("restarting plugin server")
				}
				if restarted {
					s.log.Info("plugin socket removed: serving again")
					s.kickRegistrar()
				}
			}
		}
		return
	}
	if r.o.ConfigPath != "" && dir == filepath.Dir(filepath.Clean(r.o.ConfigPath)) {
		// Debounce: editors and ConfigMap updates touch several files.
		reloadAt.Reset(100 * time.Millisecond)
	}
}

// ensureSockets restarts the servers whose socket file is gone.
func (r *runner) ensureSockets() {
	for _, s := range r.servers {
		if _, err := s.ensure(); err != nil {
			s.log.WithError(err).Error("restarting plugin server")
		}
	}
}

func (r *runner) kickAll() {
	for _, s := range r.servers {
		s.kickRegistrar()
	}
}

func (r *runner) stopAll() {
	for _, s := range r.servers {
		s.stop()
	}
}

// rescan is the periodic check: config file content, sysfs, sockets and
// registrations.
func (r *runner) rescan() {
	data, err := readConfigFile(r.o.ConfigPath)
	alloc, _ := readConfigFile(r.allocatorPath())
	if err == nil && (!bytes.Equal(data, r.cfgData) || !bytes.Equal(alloc, r.allocData)) {
		if err := r.reload(false); err != nil {
			r.reloadFailed(err)
		}
	} else {
		r.refresh(false)
	}
	r.ensureSockets()
	if _, err := os.Stat(filepath.Join(r.o.PluginDir, KubeletSocketName)); err == nil {
		for _, s := range r.servers {
			if !s.isRegistered() {
				s.kickRegistrar()
			}
		}
	}
}

// reloadFailed reports a config reload that was refused (the previous
// config stays): a log line and nitropod_deviceplugin_config_reload_failures_total.
func (r *runner) reloadFailed(err error) {
	r.m.reloadFailures.Inc()
	r.log.WithError(err).Error("config reload failed; keeping the previous config")
}

// allocatorPath is allocator.yaml's path when it is the pool source.
func (r *runner) allocatorPath() string {
	if r.cfg.Pool.Source != SourceAllocator {
		return ""
	}
	if r.cfg.Pool.AllocatorConfig != "" {
		return r.cfg.Pool.AllocatorConfig
	}
	return DefaultAllocatorConfig
}

func readConfigFile(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

// reload reads the config file, sets the pool up as it says and refreshes
// the advertisement. An unreadable or invalid file is an error (fatal at
// start; later the previous config stays).
func (r *runner) reload(first bool) error {
	data, err := readConfigFile(r.o.ConfigPath)
	if err != nil {
		return fmt.Errorf("reading device plugin config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		r.cfgData = data // do not retry the same broken file every tick
		return fmt.Errorf("%s: %w", r.o.ConfigPath, err)
	}
	if err := r.setupPool(cfg); err != nil {
		// Not fatal: a node that cannot be set up advertises what it has
		// (possibly nothing) and says why.
		r.log.WithError(err).Error("setting up the enclave pool")
	}
	sizing := cfg.MemoryBlockMiB != r.cfg.MemoryBlockMiB || cfg.EnclaveSlots != r.cfg.EnclaveSlots
	r.cfg, r.cfgData = cfg, data
	if !first {
		r.log.WithFields(logrus.Fields{"memory_block_mib": cfg.MemoryBlockMiB, "enclave_slots": cfg.EnclaveSlots, "pool_source": cfg.Pool.Source}).Info("config reloaded")
	}
	r.refresh(sizing)
	return nil
}

func (r *runner) setupPool(cfg Config) error {
	if cfg.Pool.Source == "" || cfg.Pool.Source == SourceNone {
		return nil
	}
	inv, err := Discover(r.o.Roots)
	if err != nil {
		return err
	}
	var alloc []byte
	if cfg.Pool.Source == SourceAllocator {
		path := cfg.Pool.AllocatorConfig
		if path == "" {
			path = DefaultAllocatorConfig
		}
		alloc, err = os.ReadFile(path)
		r.allocData = alloc
		if err != nil {
			return fmt.Errorf("reading allocator config: %w", err)
		}
	}
	plan, err := PlanPool(cfg.Pool, alloc, inv)
	if err != nil {
		return fmt.Errorf("planning the enclave pool: %w", err)
	}
	changed, err := ApplyPool(r.o.Roots, plan, inv)
	if changed {
		r.log.WithFields(logrus.Fields{"ne_cpus": contract.FormatCPUList(plan.CPUs), "hugepages": plan.Pages, "page_kib": plan.PageKiB}).Info("enclave pool set up")
	}
	return err
}

// refresh rediscovers the node and publishes the advertisement; restart
// forgets devices of the previous sizing instead of keeping them Unhealthy.
func (r *runner) refresh(restart bool) {
	inv, err := Discover(r.o.Roots)
	if err != nil {
		// An unreadable sysfs is a problem of this node: advertise nothing
		// healthy and say why.
		r.log.WithError(err).Error("discovering the enclave pool")
		inv = Inventory{}
	}
	prev := r.prev
	if restart {
		prev = Advertisement{}
	}
	adv := Advertise(inv, Settings{MemoryBlockMiB: r.cfg.MemoryBlockMiB, EnclaveSlots: r.cfg.EnclaveSlots}, prev)
	if err != nil {
		adv.Problem = err.Error()
	}
	if r.st.set(inv, adv) {
		l := r.log.WithField("devices", adv.Summary())
		if adv.Problem != "" {
			l.WithField("reason", adv.Problem).Warn("node advertises no enclave capacity")
		} else {
			l.Info("advertising enclave capacity")
		}
	}
	r.prev = adv
}

func (r *runner) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(r.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		var b strings.Builder
		ok := true
		for _, s := range r.servers {
			serving, registered := s.status()
			ok = ok && serving
			fmt.Fprintf(&b, "%s serving=%t registered=%t\n", s.resource, serving, registered)
		}
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write([]byte(b.String()))
	})
	return mux
}

// resourceServer is one resource's gRPC server on its socket and its
// registration with kubelet.
type resourceServer struct {
	resource string
	dir      string
	st       *state
	log      logrus.FieldLogger
	m        *metrics
	kick     chan struct{}

	// life serializes starting and stopping the server.
	life sync.Mutex

	mu  sync.Mutex
	srv *grpc.Server
	// served is set when kubelet accepted a registration of this server
	// instance: kubelet refuses a second registration of an endpoint it is
	// still connected to, so registering again needs a new server.
	served     bool
	registered bool
	// epoch counts invalidations (kubelet or plugin socket gone), so a
	// registration that raced with one does not count as current.
	epoch int
}

func (s *resourceServer) socketPath() string { return filepath.Join(s.dir, SocketName(s.resource)) }

// ensure starts the server unless it serves on an existing socket file,
// and reports whether it did.
func (s *resourceServer) ensure() (bool, error) {
	s.life.Lock()
	defer s.life.Unlock()
	serving, _ := s.status()
	if _, err := os.Stat(s.socketPath()); err == nil && serving {
		return false, nil
	}
	return true, s.startLocked()
}

// start (re)creates the socket and serves the DevicePlugin API on it.
func (s *resourceServer) start() error {
	s.life.Lock()
	defer s.life.Unlock()
	return s.startLocked()
}

func (s *resourceServer) startLocked() error {
	s.stopLocked()
	path := s.socketPath()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale plugin socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening on plugin socket: %w", err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, &service{resource: s.resource, st: s.st})
	go func() { _ = srv.Serve(ln) }()
	s.mu.Lock()
	s.srv, s.served = srv, false
	s.mu.Unlock()
	return nil
}

// stop ends the server (and its ListAndWatch streams) and removes the socket.
func (s *resourceServer) stop() {
	s.life.Lock()
	defer s.life.Unlock()
	s.stopLocked()
}

func (s *resourceServer) stopLocked() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Stop()
	s.setRegistered(false)
	if err := os.Remove(s.socketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.WithError(err).Warn("removing plugin socket")
	}
}

// setRegistered(false) invalidates the registration.
func (s *resourceServer) setRegistered(v bool) {
	s.mu.Lock()
	s.registered = v
	if !v {
		s.epoch++
	}
	s.mu.Unlock()
	if v {
		s.m.registered.WithLabelValues(s.resource).Set(1)
	} else {
		s.m.registered.WithLabelValues(s.resource).Set(0)
	}
}

func (s *resourceServer) wasServed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served
}

func (s *resourceServer) currentEpoch() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// registeredIn records kubelet's acceptance and marks the registration
// current unless it was invalidated since epoch began.
func (s *resourceServer) registeredIn(epoch int) bool {
	s.mu.Lock()
	s.served = true
	ok := s.epoch == epoch
	if ok {
		s.registered = true
	}
	s.mu.Unlock()
	if ok {
		s.m.registered.WithLabelValues(s.resource).Set(1)
	}
	return ok
}

func (s *resourceServer) isRegistered() bool {
	_, reg := s.status()
	return reg
}

func (s *resourceServer) status() (serving, registered bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv != nil, s.registered
}

func (s *resourceServer) kickRegistrar() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// registrar registers with kubelet whenever kicked, retrying quickly while
// kubelet.sock exists (kubelet creates the file a moment before it accepts).
func (s *resourceServer) registrar(ctx context.Context) {
	kubelet := filepath.Join(s.dir, KubeletSocketName)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		// A kubelet restart shows as several file events within
		// microseconds; let them settle so that one registration follows.
		for settled := false; !settled; {
			select {
			case <-ctx.Done():
				return
			case <-s.kick:
			case <-time.After(registerSettle):
				settled = true
			}
		}
		if s.isRegistered() {
			continue // a kick queued while the last attempt succeeded
		}
		for attempt := 0; ; attempt++ {
			if _, err := os.Stat(kubelet); err != nil {
				break // wait for kubelet.sock to appear
			}
			if s.wasServed() {
				// kubelet is (or was) connected to this server: only a new
				// server can register again.
				if err := s.start(); err != nil {
					s.log.WithError(err).Error("restarting plugin server")
				}
			}
			epoch := s.currentEpoch()
			err := s.register(ctx, kubelet)
			if err == nil {
				s.m.registrations.WithLabelValues(s.resource).Inc()
				if s.registeredIn(epoch) {
					// Logged only once kubelet accepted this registration
					// and no restart invalidated it (tests wait for it).
					s.log.Info("registered with kubelet")
					break
				}
				s.log.Info("kubelet restarted during registration: registering again")
				continue
			}
			if attempt%20 == 0 {
				s.log.WithError(err).Warn("registering with kubelet, retrying")
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// register calls kubelet's Registration service once.
func (s *resourceServer) register(ctx context.Context, kubelet string) error {
	conn, err := grpc.NewClient("unix://"+kubelet, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dialing kubelet: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     SocketName(s.resource),
		ResourceName: s.resource,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	})
	if err != nil {
		return fmt.Errorf("registering %s with kubelet: %w", s.resource, err)
	}
	return nil
}
