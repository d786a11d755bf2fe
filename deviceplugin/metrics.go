package deviceplugin

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the plugin's Prometheus series, served on /metrics.
type metrics struct {
	reg           *prometheus.Registry
	capacity      *prometheus.GaugeVec
	allocatable   *prometheus.GaugeVec
	allocations   *prometheus.CounterVec
	allocErrors   *prometheus.CounterVec
	registered    *prometheus.GaugeVec
	registrations *prometheus.CounterVec
	// reloadFailures counts config reloads refused (previous config kept).
	reloadFailures prometheus.Counter
	supported      prometheus.Gauge
	unsupported    *prometheus.GaugeVec
	blockMiB       prometheus.Gauge
	allocSeconds   *prometheus.HistogramVec
}

func newMetrics() *metrics {
	const ns, sub = "nitropod", "deviceplugin"
	m := &metrics{
		reg: prometheus.NewRegistry(),
		capacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "capacity",
			Help: "Devices advertised to kubelet, healthy or not, per resource."}, []string{"resource"}),
		allocatable: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "allocatable",
			Help: "Healthy devices advertised to kubelet, per resource."}, []string{"resource"}),
		allocations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "allocations_total",
			Help: "Container allocations answered, per resource."}, []string{"resource"}),
		allocErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "allocation_errors_total",
			Help: "Container allocations refused, per resource."}, []string{"resource"}),
		registered: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "registered",
			Help: "1 while the resource is registered with kubelet."}, []string{"resource"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "registrations_total",
			Help: "Successful registrations with kubelet, per resource."}, []string{"resource"}),
		reloadFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "config_reload_failures_total",
			Help: "Config file reloads refused because the file was unreadable or invalid (the previous config stays)."}),
		supported: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "nitro_supported",
			Help: "1 when the node can run enclaves, 0 when it advertises nothing healthy (see nitropod_deviceplugin_unsupported)."}),
		unsupported: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "unsupported",
			Help: "1 with the reason why this node advertises no enclave capacity."}, []string{"reason"}),
		blockMiB: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "memory_block_mib",
			Help: "Size of one nitropod.io/enclave-memory device in MiB."}),
		allocSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "allocate_seconds",
			Help:    "Time to answer Allocate, per resource.",
			Buckets: []float64{1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1}}, []string{"resource"}),
	}
	for _, r := range Resources {
		// Every series exists from the start, at zero.
		m.registered.WithLabelValues(r)
		m.registrations.WithLabelValues(r)
		m.allocations.WithLabelValues(r)
		m.allocErrors.WithLabelValues(r)
	}
	m.reg.MustRegister(m.capacity, m.allocatable, m.allocations, m.allocErrors, m.registered,
		m.registrations, m.reloadFailures, m.supported, m.unsupported, m.blockMiB, m.allocSeconds)
	return m
}

// advertised updates the gauges that describe an advertisement.
func (m *metrics) advertised(a Advertisement, resources []string) {
	for _, r := range resources {
		ds := a.Devices(r)
		m.capacity.WithLabelValues(r).Set(float64(len(ds)))
		m.allocatable.WithLabelValues(r).Set(float64(countHealthy(ds)))
	}
	m.blockMiB.Set(float64(a.BlockMiB))
	m.unsupported.Reset()
	if a.Problem == "" {
		m.supported.Set(1)
	} else {
		m.supported.Set(0)
		m.unsupported.WithLabelValues(a.Problem).Set(1)
	}
}
