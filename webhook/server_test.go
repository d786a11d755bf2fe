package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

type testServer struct {
	url      string
	certFile string
	keyFile  string
	client   *http.Client
}

// startServer runs Run on a loopback port with a fresh CA; it stops at the
// end of the test.
func startServer(t testing.TB, opts Options) *testServer {
	t.Helper()
	return startServerLog(t, opts, nil)
}

// startServerLog is startServer with Run's logger.
func startServerLog(t testing.TB, opts Options, log logrus.FieldLogger) *testServer {
	t.Helper()
	dir := t.TempDir()
	certs, err := GenerateCerts([]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key")}
	if err := certs.WriteFiles(s.certFile, s.keyFile, ""); err != nil {
		t.Fatal(err)
	}
	s.client = clientFor(t, certs.CAPEM)
	opts.Listen = "127.0.0.1:0"
	opts.TLSCertFile, opts.TLSKeyFile = s.certFile, s.keyFile
	addr := make(chan net.Addr, 1)
	opts.Ready = func(a net.Addr) { addr <- a }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts, log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case a := <-addr:
		s.url = "https://" + a.String()
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("server did not start")
	}
	return s
}

func clientFor(t testing.TB, caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("bad ca")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func reviewFor(t testing.TB, pod *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("0d5d7bd2-4d4a-4b4e-9b1e-000000000001"),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "default",
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func post(t testing.TB, s *testServer, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	resp, err := s.client.Post(s.url+MutatePath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s: %s", resp.Status, b)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(b, &review); err != nil {
		t.Fatal(err)
	}
	if review.Kind != "AdmissionReview" || review.APIVersion != "admission.k8s.io/v1" || review.Response == nil {
		t.Fatalf("not an AdmissionReview v1 answer: %s", b)
	}
	return review.Response
}

func TestServerReviews(t *testing.T) {
	s := startServer(t, Options{})
	for _, tc := range goldenCases(t) {
		if tc.cfg != (Config{}) {
			// This server runs the default configuration; cases with their
			// own are covered by TestConvertGolden.
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, s, reviewFor(t, tc.pod))
			if !resp.Allowed || resp.UID != "0d5d7bd2-4d4a-4b4e-9b1e-000000000001" {
				t.Fatalf("response %+v", resp)
			}
			if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Fatalf("patch type %v", resp.PatchType)
			}
			var ops []PatchOp
			if err := json.Unmarshal(resp.Patch, &ops); err != nil {
				t.Fatal(err)
			}
			from, _ := json.Marshal(tc.pod)
			got, err := applyPatch(from, ops)
			if err != nil {
				t.Fatal(err)
			}
			want, warnings, _ := Convert(tc.pod, tc.cfg)
			wantJSON, _ := json.Marshal(want)
			if diff := cmp.Diff(canonical(t, wantJSON), canonical(t, got)); diff != "" {
				t.Errorf("patched pod (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(warnings, resp.Warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("denied", func(t *testing.T) {
		pod := basePod()
		pod.Spec.Containers[0].Resources.Limits[corev1.ResourceCPU] = mustQ("3")
		resp := post(t, s, reviewFor(t, pod))
		if resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusForbidden || resp.Patch != nil {
			t.Fatalf("response %+v", resp)
		}
		want := `container nginx-pod: limits.cpu "3" must be an even integer (vCPUs come in hyperthread pairs); use "2" or "4"`
		if resp.Result.Message != want {
			t.Errorf("message %q, want %q", resp.Result.Message, want)
		}
	})
	t.Run("unmanaged", func(t *testing.T) {
		pod := basePod()
		pod.Labels = nil
		resp := post(t, s, reviewFor(t, pod))
		if !resp.Allowed || resp.Patch != nil || resp.PatchType != nil || len(resp.Warnings) != 0 {
			t.Fatalf("response %+v", resp)
		}
	})
	t.Run("converted again", func(t *testing.T) {
		out, _, err := Convert(basePod(), Config{})
		if err != nil {
			t.Fatal(err)
		}
		resp := post(t, s, reviewFor(t, out))
		if !resp.Allowed || resp.Patch != nil {
			t.Fatalf("reinvocation patched: %s", resp.Patch)
		}
	})
	t.Run("bad object", func(t *testing.T) {
		body := bytes.Replace(reviewFor(t, basePod()), []byte(`"containers":[`), []byte(`"containers":"x","c":[`), 1)
		resp := post(t, s, body)
		if resp.Allowed || resp.Result.Code != http.StatusBadRequest || !strings.HasPrefix(resp.Result.Message, "decoding pod: ") {
			t.Fatalf("response %+v", resp.Result)
		}
	})
	for _, tc := range []struct {
		name, method, body string
		status             int
	}{
		{"get", http.MethodGet, "", http.StatusMethodNotAllowed},
		{"not json", http.MethodPost, "{", http.StatusBadRequest},
		{"no request", http.MethodPost, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, s.url+MutatePath, strings.NewReader(tc.body))
			resp, err := s.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
	t.Run("health and metrics", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz"} {
			resp, err := s.client.Get(s.url + p)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: %s", p, resp.Status)
			}
		}
		resp, err := s.client.Get(s.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{
			`nitropod_webhook_reviews_total{result="denied"} 1`,
			`nitropod_webhook_reviews_total{result="skipped"} 1`,
			`nitropod_webhook_reviews_total{result="unchanged"} 1`,
			`nitropod_webhook_review_duration_seconds_bucket{le="+Inf"}`,
			"process_resident_memory_bytes",
		} {
			if !strings.Contains(string(b), want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
	})
}

func TestServerReloadsCertificate(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	s := startServerLog(t, Options{CertPoll: time.Hour}, log) // file events only
	fresh, err := GenerateCerts([]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.WriteFiles(s.certFile, s.keyFile, ""); err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, fresh.CAPEM)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get(s.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server still serves the old certificate: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A broken pair is ignored: the server keeps serving the last good one.
	// (Refusals logged so far came from the update above, between its two
	// file writes; wait for one more, caused by the broken file.)
	failed := func() int {
		n := 0
		for _, e := range hook.AllEntries() {
			if strings.Contains(e.Message, "reloading tls key pair failed") {
				n++
			}
		}
		return n
	}
	before := failed()
	if err := writeFileAtomic(s.certFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); failed() == before; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the server did not try (and refuse) the broken certificate within 10s")
		}
	}
	resp, err := c.Get(s.url + "/healthz")
	if err != nil {
		t.Fatalf("after a broken update: %v", err)
	}
	resp.Body.Close()
}

func TestRunRejectsBadConfig(t *testing.T) {
	err := Run(context.Background(), Options{Config: Config{DefaultCPU: ptr(mustQ("3"))}}, nil)
	if err == nil || !strings.Contains(err.Error(), `default cpu "3"`) {
		t.Fatalf("Run = %v", err)
	}
	err = Run(context.Background(), Options{Listen: "127.0.0.1:0", TLSCertFile: "/nonexistent/c", TLSKeyFile: "/nonexistent/k"}, nil)
	if err == nil || !strings.Contains(err.Error(), "reading tls certificate") {
		t.Fatalf("Run = %v", err)
	}
}
