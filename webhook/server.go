package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
)

// Options configure the webhook server.
type Options struct {
	// Listen is the TCP address of the HTTPS server (":8443").
	Listen string
	// TLSCertFile and TLSKeyFile hold the serving key pair; they are
	// reloaded when they change.
	TLSCertFile, TLSKeyFile string
	// Config is the conversion's configuration.
	Config Config
	// Bootstrap, when set, makes the key pair (and patches a webhook
	// configuration's caBundle) if TLSCertFile does not exist.
	Bootstrap *Bootstrap
	// CertPoll is how often the key pair is re-read besides file-system
	// events (0: every minute).
	CertPoll time.Duration
	// Ready, when set, is called once the server accepts connections.
	Ready func(addr net.Addr)
	// Listener, when set, is used instead of listening on Listen (tests
	// that must know the address before the server starts bind port 0
	// themselves). Run closes it.
	Listener net.Listener

	// admission replaces the admission handler (the benchmark's null handler).
	admission http.Handler
}

// Run serves /mutate-pods, /healthz, /readyz and /metrics over HTTPS until
// ctx is done, then shuts down gracefully.
func Run(ctx context.Context, opts Options, log logrus.FieldLogger) error {
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	if opts.Listener != nil {
		defer opts.Listener.Close()
	}
	if err := opts.Config.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	if opts.Bootstrap != nil {
		if err := opts.Bootstrap.ensure(ctx, opts.TLSCertFile, opts.TLSKeyFile, log); err != nil {
			return fmt.Errorf("bootstrapping certificates: %w", err)
		}
	}
	certs, err := NewCertReloader(opts.TLSCertFile, opts.TLSKeyFile)
	if err != nil {
		return err
	}
	metrics := NewMetrics()
	admission := opts.admission
	if admission == nil {
		admission = NewHandler(opts.Config, metrics, log)
	}
	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.Handle(MutatePath, admission)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))

	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate},
		ErrorLog:          stdlog.New(debugWriter{log}, "", 0),
	}
	ln := opts.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", opts.Listen); err != nil {
			return fmt.Errorf("listening on %s: %w", opts.Listen, err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watchDone := watchCerts(ctx, certs, opts.CertPoll, log)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ServeTLS(ln, "", "") }()
	ready.Store(true)
	log.WithField("address", ln.Addr().String()).Info("serving admission reviews")
	if opts.Ready != nil {
		opts.Ready(ln.Addr())
	}
	select {
	case err = <-serveErr:
	case <-ctx.Done():
		ready.Store(false)
		shutdownCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
		err = srv.Shutdown(shutdownCtx)
		stop()
		if serr := <-serveErr; err == nil && !errors.Is(serr, http.ErrServerClosed) {
			err = serr
		}
	}
	cancel()
	<-watchDone
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// watchCerts starts watching the directories of the key pair's files
// (Secret volumes update by swapping a symlink) before it returns, then
// reloads the pair on every change there and every poll interval until ctx
// is done; the returned channel is closed when it has stopped.
func watchCerts(ctx context.Context, certs *CertReloader, poll time.Duration, log logrus.FieldLogger) <-chan struct{} {
	if poll <= 0 {
		poll = time.Minute
	}
	reload := func() {
		changed, err := certs.Reload()
		switch {
		case err != nil:
			log.WithError(err).Warn("reloading tls key pair failed; keeping the previous one")
		case changed:
			log.Info("tls key pair reloaded")
		}
	}
	var events <-chan fsnotify.Event
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.WithError(err).Warn("watching tls files failed; polling only")
	} else {
		for _, d := range uniq(filepath.Dir(certs.certFile), filepath.Dir(certs.keyFile)) {
			if err := w.Add(d); err != nil {
				log.WithError(err).WithField("dir", d).Warn("watching tls directory failed; polling only")
			}
		}
		events = w.Events
		go func() {
			for range w.Errors {
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if w != nil {
			defer w.Close()
		}
		t := time.NewTicker(poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-events:
				reload()
			case <-t.C:
				reload()
			}
		}
	}()
	return done
}

// debugWriter sends net/http's own messages (TLS handshake errors from
// probes and scanners) to the logger at debug level.
type debugWriter struct{ log logrus.FieldLogger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}

func uniq(a, b string) []string {
	if a == b {
		return []string{a}
	}
	return []string{a, b}
}
