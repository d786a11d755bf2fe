package webhook

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// applyPatch is an independent RFC 6902 applier for add/remove/replace, used
// to check that CreatePatch's output really turns one document into the other.
func applyPatch(doc []byte, ops []PatchOp) ([]byte, error) {
	v, err := decodeJSON(doc)
	if err != nil {
		return nil, err
	}
	for _, o := range ops {
		var val any
		if o.Op != "remove" {
			if val, err = decodeJSON(o.Value); err != nil {
				return nil, err
			}
		}
		if o.Path == "" {
			v = val
			continue
		}
		parts := strings.Split(o.Path[1:], "/")
		for i, p := range parts {
			parts[i] = strings.ReplaceAll(strings.ReplaceAll(p, "~1", "/"), "~0", "~")
		}
		parent := v
		for _, p := range parts[:len(parts)-1] {
			switch c := parent.(type) {
			case map[string]any:
				parent = c[p]
			case []any:
				i, _ := strconv.Atoi(p)
				parent = c[i]
			default:
				return nil, fmt.Errorf("%s: no parent", o.Path)
			}
		}
		last := parts[len(parts)-1]
		m, ok := parent.(map[string]any)
		if !ok {
			a, ok := parent.([]any)
			i, err := strconv.Atoi(last)
			if !ok || err != nil || o.Op != "replace" || i >= len(a) {
				return nil, fmt.Errorf("%s: unsupported array op %s", o.Path, o.Op)
			}
			a[i] = val
			continue
		}
		_, exists := m[last]
		switch o.Op {
		case "add":
			m[last] = val
		case "replace", "remove":
			if !exists {
				return nil, fmt.Errorf("%s: %s of a missing member", o.Path, o.Op)
			}
			if o.Op == "remove" {
				delete(m, last)
			} else {
				m[last] = val
			}
		}
	}
	return json.Marshal(v)
}

func canonical(t *testing.T, b []byte) string {
	t.Helper()
	v, err := decodeJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

func TestCreatePatch(t *testing.T) {
	for _, tc := range []struct {
		name, from, to string
		want           []PatchOp
	}{
		{"equal", `{"a":1,"b":[1,2]}`, `{"a":1,"b":[1,2]}`, nil},
		{"add escaped key", `{"m":{}}`, `{"m":{"nitropod.io/enclave-cpu":"2","a~b":1}}`, []PatchOp{
			{Op: "add", Path: "/m/a~0b", Value: json.RawMessage(`1`)},
			{Op: "add", Path: "/m/nitropod.io~1enclave-cpu", Value: json.RawMessage(`"2"`)},
		}},
		{"remove and replace", `{"a":1,"b":"x","c":null}`, `{"b":"y","c":false}`, []PatchOp{
			{Op: "remove", Path: "/a"},
			{Op: "replace", Path: "/b", Value: json.RawMessage(`"y"`)},
			{Op: "replace", Path: "/c", Value: json.RawMessage(`false`)},
		}},
		{"add null", `{}`, `{"a":null}`, []PatchOp{{Op: "add", Path: "/a", Value: json.RawMessage(`null`)}}},
		{"array element", `{"l":[{"n":1},{"n":2}]}`, `{"l":[{"n":1},{"n":3}]}`, []PatchOp{
			{Op: "replace", Path: "/l/1/n", Value: json.RawMessage(`3`)},
		}},
		{"array grows", `{"l":[1]}`, `{"l":[1,2]}`, []PatchOp{{Op: "replace", Path: "/l", Value: json.RawMessage(`[1,2]`)}}},
		{"type change", `{"l":[1]}`, `{"l":{"x":1}}`, []PatchOp{{Op: "replace", Path: "/l", Value: json.RawMessage(`{"x":1}`)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ops, err := CreatePatch([]byte(tc.from), []byte(tc.to))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, ops); diff != "" {
				t.Errorf("ops (-want +got):\n%s", diff)
			}
			got, err := applyPatch([]byte(tc.from), ops)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(canonical(t, []byte(tc.to)), canonical(t, got)); diff != "" {
				t.Errorf("applied (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCreatePatchGolden(t *testing.T) {
	for _, tc := range goldenCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			from, _ := json.Marshal(tc.pod)
			out, _, err := Convert(tc.pod, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			to, _ := json.Marshal(out)
			ops, err := CreatePatch(from, to)
			if err != nil {
				t.Fatal(err)
			}
			got, err := applyPatch(from, ops)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(canonical(t, to), canonical(t, got)); diff != "" {
				t.Errorf("patched original differs from Convert's output (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCreatePatchBadJSON(t *testing.T) {
	if _, err := CreatePatch([]byte(`{`), []byte(`{}`)); err == nil {
		t.Error("no error for truncated JSON")
	}
	if _, err := CreatePatch([]byte(`{}`), []byte(`{} {}`)); err == nil {
		t.Error("no error for trailing data")
	}
}

func TestPodPatch(t *testing.T) {
	type tc struct {
		name      string
		orig, out *corev1.Pod
	}
	var cases []tc
	for _, g := range goldenCases(t) {
		out, _, err := Convert(g.pod, g.cfg)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, tc{g.name, g.pod, out})
	}
	// Changes outside the fast path fall back to the full diff.
	other := basePod()
	other.Annotations = map[string]string{"a": "1", "b/c": "2"}
	changed := other.DeepCopy()
	changed.Spec.NodeName = "node-1"
	changed.Annotations = map[string]string{"b/c": "3", "d": "4"}
	changed.Spec.Containers[0].VolumeMounts = nil
	cases = append(cases, tc{"fallback and removals", other, changed})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw, _ := json.Marshal(c.orig)
			ops, err := PodPatch(raw, c.orig, c.out)
			if err != nil {
				t.Fatal(err)
			}
			got, err := applyPatch(raw, ops)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := json.Marshal(c.out)
			if diff := cmp.Diff(canonical(t, want), canonical(t, got)); diff != "" {
				t.Errorf("patched (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPodPatchTouchesOnlyChanges: a request as a client writes it (no
// status, no creationTimestamp, no empty resources) gets a patch with
// operations only where the conversion changed something, on the fast path
// and on the full-diff fallback.
func TestPodPatchTouchesOnlyChanges(t *testing.T) {
	raw := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default","labels":{"nitro.k8s.anjuna.io/managed":"yes"}},
"spec":{"containers":[{"name":"app","image":"busybox","resources":{"limits":{"cpu":"2","memory":"512Mi"}}},{"name":"b","image":"busybox"}]}}`)
	var orig corev1.Pod
	if err := json.Unmarshal(raw, &orig); err != nil {
		t.Fatal(err)
	}
	out := orig.DeepCopy()
	out.Annotations = map[string]string{"x": "1"}
	out.Spec.NodeName = "n" // outside the fast path: the full diff runs
	ops, err := PodPatch(raw, &orig, out)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, o := range ops {
		paths = append(paths, o.Op+" "+o.Path)
	}
	want := []string{"add /metadata/annotations", "add /spec/nodeName"}
	if diff := cmp.Diff(want, paths); diff != "" {
		t.Errorf("patch operations (-want +got):\n%s", diff)
	}
	got, err := applyPatch(raw, ops)
	if err != nil {
		t.Fatal(err)
	}
	var patched corev1.Pod
	if err := json.Unmarshal(got, &patched); err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(&patched, out) {
		t.Errorf("patched Pod differs from the converted one")
	}
}
