package webhook

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
)

// BenchmarkServeHTTP is the handler's CPU and allocation cost per review of
// the document's nginx Pod, without the network.
func BenchmarkServeHTTP(b *testing.B) {
	body := reviewFor(b, readPod(b, filepath.Join("testdata", "golden", "nginx-example.in.yaml")))
	h := NewHandler(Config{}, NewMetrics(), nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, MutatePath, bytes.NewReader(body)))
		if rec.Code != http.StatusOK {
			b.Fatal(rec.Code)
		}
	}
}
