package webhook

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sirupsen/logrus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MutatePath is where the webhook serves AdmissionReview v1.
const MutatePath = "/mutate-pods"

// maxReviewBytes bounds a request body; kube-apiserver's own limit for an
// object is 3 MiB, and the review carries it once (plus metadata).
const maxReviewBytes = 7 << 20

// Review results, the values of the "result" label of the reviews metric.
const (
	ResultSkipped   = "skipped"   // not a managed Pod creation: allowed unchanged
	ResultMutated   = "mutated"   // managed Pod, allowed with a patch
	ResultUnchanged = "unchanged" // managed Pod already in its converted form
	ResultDenied    = "denied"    // managed Pod that cannot run in an enclave
	ResultError     = "error"     // malformed review or object
)

// Metrics are the webhook's Prometheus metrics, in their own registry.
type Metrics struct {
	Registry *prometheus.Registry
	reviews  *prometheus.CounterVec
	latency  prometheus.Histogram
}

// NewMetrics registers the webhook's metrics in a new registry (with the Go
// and process collectors).
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nitropod_webhook_reviews_total",
			Help: "AdmissionReviews answered, by result (skipped, mutated, unchanged, denied, error).",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nitropod_webhook_review_duration_seconds",
			Help:    "Time from request to response of an AdmissionReview, decoding and encoding included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
	}
	for _, r := range []string{ResultSkipped, ResultMutated, ResultUnchanged, ResultDenied, ResultError} {
		m.reviews.WithLabelValues(r)
	}
	m.Registry.MustRegister(m.reviews, m.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler answers AdmissionReview v1 requests for Pods by calling Convert.
type Handler struct {
	cfg     Config
	metrics *Metrics
	log     logrus.FieldLogger
}

// NewHandler returns the admission handler; metrics and log may be nil.
func NewHandler(cfg Config, metrics *Metrics, log logrus.FieldLogger) *Handler {
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	return &Handler{cfg: cfg.withDefaults(), metrics: metrics, log: log}
}

// ServeHTTP decodes an AdmissionReview, reviews its request and writes the
// AdmissionReview answer.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	result := ResultError
	defer func() {
		if h.metrics != nil {
			h.metrics.reviews.WithLabelValues(result).Inc()
			h.metrics.latency.Observe(time.Since(start).Seconds())
		}
	}()
	if r.Method != http.MethodPost {
		http.Error(w, "use POST with an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err != nil {
		http.Error(w, fmt.Sprintf("reading request: %v", err), http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		http.Error(w, fmt.Sprintf("decoding AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	if review.Request == nil {
		http.Error(w, "AdmissionReview has no request", http.StatusBadRequest)
		return
	}
	var resp *admissionv1.AdmissionResponse
	resp, result = h.Review(review.Request)
	out, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: resp,
	})
	if err != nil {
		result = ResultError
		http.Error(w, fmt.Sprintf("encoding AdmissionReview: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

var podKind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}

// Review answers one admission request and says which result it was.
func (h *Handler) Review(req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, string) {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind != podKind || req.Operation != admissionv1.Create || req.SubResource != "" {
		return resp, ResultSkipped
	}
	fail := func(code int32, reason metav1.StatusReason, msg string) {
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: code, Reason: reason, Message: msg}
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		fail(http.StatusBadRequest, metav1.StatusReasonBadRequest, fmt.Sprintf("decoding pod: %v", err))
		return resp, ResultError
	}
	log := func() logrus.FieldLogger {
		return h.log.WithFields(logrus.Fields{"namespace": req.Namespace, "pod": podName(&pod, req), "uid": req.UID})
	}
	out, warnings, err := Convert(&pod, h.cfg)
	resp.Warnings = warnings
	if err != nil {
		if IsDenied(err) {
			log().WithField("reason", err.Error()).Info("pod denied")
			fail(http.StatusForbidden, metav1.StatusReasonForbidden, err.Error())
			return resp, ResultDenied
		}
		fail(http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error())
		return resp, ResultError
	}
	if !Managed(&pod) {
		return resp, ResultSkipped
	}
	ops, err := podPatch(req.Object.Raw, &pod, out) // pod is not used afterwards
	if err != nil {
		fail(http.StatusBadRequest, metav1.StatusReasonBadRequest, fmt.Sprintf("computing patch: %v", err))
		return resp, ResultError
	}
	if len(ops) == 0 {
		return resp, ResultUnchanged
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		fail(http.StatusInternalServerError, metav1.StatusReasonInternalError, fmt.Sprintf("encoding patch: %v", err))
		return resp, ResultError
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	return resp, ResultMutated
}

func podName(p *corev1.Pod, req *admissionv1.AdmissionRequest) string {
	switch {
	case p.Name != "":
		return p.Name
	case req.Name != "":
		return req.Name
	default:
		return p.GenerateName + "*"
	}
}
