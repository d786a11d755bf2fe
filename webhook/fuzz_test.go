package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

// goldenSeeds returns the golden inputs as JSON (and, with -update, writes
// them as the committed seed corpus of the named fuzz target).
func goldenSeeds(f *testing.F, target string, wrap func(*corev1.Pod) []byte) [][]byte {
	var seeds [][]byte
	for _, tc := range goldenCases(f) {
		b := wrap(tc.pod)
		seeds = append(seeds, b)
		if *update {
			dir := filepath.Join("testdata", "fuzz", target)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				f.Fatal(err)
			}
			corpus := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(b)))
			if err := os.WriteFile(filepath.Join(dir, "golden-"+tc.name), []byte(corpus), 0o644); err != nil {
				f.Fatal(err)
			}
		}
	}
	return seeds
}

// FuzzConvert feeds random Pods (forced to be managed) to Convert: it must
// not panic, every denial must say why, and an admitted Pod must be a fixed
// point (converting it again changes nothing).
func FuzzConvert(f *testing.F) {
	for _, s := range goldenSeeds(f, "FuzzConvert", func(p *corev1.Pod) []byte { b, _ := json.Marshal(p); return b }) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var pod corev1.Pod
		if json.Unmarshal(data, &pod) != nil {
			return
		}
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels[nitropod.ManagedLabel] = nitropod.ManagedValue
		for _, cfg := range []Config{{}, {LicenseOptional: true, DefaultCPU: ptr(mustQ("2")), DefaultMemory: ptr(mustQ("1Gi"))}} {
			out, _, err := Convert(&pod, cfg)
			if err != nil {
				var d *DeniedError
				if !errors.As(err, &d) || len(d.Violations) == 0 {
					t.Fatalf("error without a denial message: %#v", err)
				}
				for _, v := range d.Violations {
					if v == "" {
						t.Fatal("empty violation")
					}
				}
				continue
			}
			var stored corev1.Pod
			if err := json.Unmarshal([]byte(podJSON(t, out)), &stored); err != nil {
				t.Fatalf("converted pod does not round-trip: %v", err)
			}
			again, _, err := Convert(&stored, cfg)
			if err != nil {
				t.Fatalf("converted pod denied on the second pass: %v", err)
			}
			if a, b := podJSON(t, out), podJSON(t, again); a != b {
				t.Fatalf("not idempotent:\nonce:  %s\ntwice: %s", a, b)
			}
			raw, _ := json.Marshal(&pod)
			ops, err := PodPatch(raw, &pod, out)
			if err != nil {
				t.Fatalf("PodPatch: %v", err)
			}
			patched, err := applyPatch(raw, ops)
			if err != nil {
				t.Fatalf("applying the patch: %v", err)
			}
			if want, _ := json.Marshal(out); canonical(t, want) != canonical(t, patched) {
				t.Fatalf("patch does not produce Convert's output:\nwant %s\ngot  %s", want, patched)
			}
			if _, err := contract.ParseEnclaves(out.Annotations[nitropod.EnclavesAnnotation]); err != nil {
				t.Fatalf("annotation the shim cannot read: %v", err)
			}
		}
	})
}

// FuzzReview feeds random AdmissionReview bodies to the HTTP handler: no
// panic, a 200 answer is an AdmissionReview whose refusals carry a message,
// and a patch is valid JSON Patch.
func FuzzReview(f *testing.F) {
	for _, s := range goldenSeeds(f, "FuzzReview", func(p *corev1.Pod) []byte { return reviewFor(f, p) }) {
		f.Add(s)
	}
	f.Add([]byte(`{"request":{"uid":"1","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"labels":{"nitro.k8s.anjuna.io/managed":"yes"}}}}}`))
	h := NewHandler(Config{}, NewMetrics(), nil)
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, MutatePath, bytes.NewReader(body)))
		if rec.Code != http.StatusOK {
			if rec.Code != http.StatusBadRequest || rec.Body.Len() == 0 {
				t.Fatalf("status %d with body %q", rec.Code, rec.Body.String())
			}
			return
		}
		var review admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &review); err != nil || review.Response == nil {
			t.Fatalf("200 without an AdmissionReview: %v %s", err, rec.Body.String())
		}
		r := review.Response
		if !r.Allowed && (r.Result == nil || r.Result.Message == "") {
			t.Fatalf("refusal without a message: %+v", r)
		}
		if r.Patch != nil {
			var ops []PatchOp
			if err := json.Unmarshal(r.Patch, &ops); err != nil || len(ops) == 0 {
				t.Fatalf("bad patch %s: %v", r.Patch, err)
			}
		}
	})
}

// FuzzConvertFields builds Pods from random values in the places the rules
// look at (quantities, annotations, env, mounts, runtime class, container
// count), which reaches deeper than mutating JSON bytes. The same
// properties as FuzzConvert hold.
func FuzzConvertFields(f *testing.F) {
	f.Add("2", "2048Mi", "", "", "", "yes", "", uint8(1), true, "", "")
	f.Add("3", "32Mi", "750m", "4Gi", "s3://b-1/k", "no", "nitro", uint8(2), false, "1", "64Mi")
	f.Add("2500m", "1G", "x", "-1", "s3://B/", "", "runc", uint8(5), true, "4", "3Gi")
	f.Fuzz(func(t *testing.T, cpu, mem, lcpu, lmem, loc, debug, rc string, n uint8, license bool, reqCPU, reqMem string) {
		pod := basePod()
		c := &pod.Spec.Containers[0]
		c.Resources.Limits = corev1.ResourceList{}
		c.Resources.Requests = corev1.ResourceList{}
		for _, q := range []struct {
			list corev1.ResourceList
			name corev1.ResourceName
			v    string
		}{{c.Resources.Limits, corev1.ResourceCPU, cpu}, {c.Resources.Limits, corev1.ResourceMemory, mem},
			{c.Resources.Requests, corev1.ResourceCPU, reqCPU}, {c.Resources.Requests, corev1.ResourceMemory, reqMem}} {
			if v, err := resource.ParseQuantity(q.v); err == nil {
				q.list[q.name] = v
			}
		}
		pod.Annotations = map[string]string{}
		for k, v := range map[string]string{nitropod.LauncherCPUAnnotation: lcpu, nitropod.LauncherMemoryAnnotation: lmem, nitropod.ImageLocationAnnotation: loc} {
			if v != "" {
				pod.Annotations[k] = v
			}
		}
		if debug != "" {
			c.Env = []corev1.EnvVar{{Name: nitropod.DebugModeEnv, Value: debug}}
		}
		if rc != "" {
			pod.Spec.RuntimeClassName = &rc
		}
		if !license {
			pod.Spec.Volumes, c.VolumeMounts = nil, nil
		}
		for i := 1; i < int(n%8); i++ {
			extra := c.DeepCopy()
			extra.Name = "c" + strconv.Itoa(i)
			pod.Spec.Containers = append(pod.Spec.Containers, *extra)
		}
		out, _, err := Convert(pod, Config{})
		if err != nil {
			var d *DeniedError
			if !errors.As(err, &d) || len(d.Violations) == 0 {
				t.Fatalf("error without a denial message: %#v", err)
			}
			return
		}
		again, _, err := Convert(out, Config{})
		if err != nil {
			t.Fatalf("converted pod denied on the second pass: %v", err)
		}
		if a, b := podJSON(t, out), podJSON(t, again); a != b {
			t.Fatalf("not idempotent:\nonce:  %s\ntwice: %s", a, b)
		}
		enclaves, err := contract.ParseEnclaves(out.Annotations[nitropod.EnclavesAnnotation])
		if err != nil || len(enclaves) != len(out.Spec.Containers) {
			t.Fatalf("enclaves annotation %q: %v", out.Annotations[nitropod.EnclavesAnnotation], err)
		}
	})
}
