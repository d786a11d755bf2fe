package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// PatchOp is one RFC 6902 JSON Patch operation.
type PatchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value,omitempty"`
}

// CreatePatch returns the JSON Patch operations that turn the JSON document
// from into to: objects are compared key by key, arrays of equal length
// element by element, and anything else that differs is replaced whole.
// Operations come in a deterministic order.
func CreatePatch(from, to []byte) ([]PatchOp, error) {
	a, err := decodeJSON(from)
	if err != nil {
		return nil, fmt.Errorf("decoding original object: %w", err)
	}
	b, err := decodeJSON(to)
	if err != nil {
		return nil, fmt.Errorf("decoding patched object: %w", err)
	}
	var ops []PatchOp
	if err := diff(&ops, "", a, b); err != nil {
		return nil, err
	}
	return ops, nil
}

func decodeJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, fmt.Errorf("trailing data after the JSON document")
	}
	return v, nil
}

func op(ops *[]PatchOp, kind, path string, v any) error {
	o := PatchOp{Op: kind, Path: path}
	if kind != "remove" {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encoding patch value at %s: %w", path, err)
		}
		o.Value = b
	}
	*ops = append(*ops, o)
	return nil
}

func diff(ops *[]PatchOp, path string, a, b any) error {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			break
		}
		keys := make([]string, 0, len(av)+len(bv))
		for k := range av {
			keys = append(keys, k)
		}
		for k := range bv {
			if _, ok := av[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := path + "/" + escapePointer(k)
			x, inA := av[k]
			y, inB := bv[k]
			var err error
			switch {
			case !inB:
				err = op(ops, "remove", p, nil)
			case !inA:
				err = op(ops, "add", p, y)
			default:
				err = diff(ops, p, x, y)
			}
			if err != nil {
				return err
			}
		}
		return nil
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			break
		}
		for i := range av {
			if err := diff(ops, path+"/"+strconv.Itoa(i), av[i], bv[i]); err != nil {
				return err
			}
		}
		return nil
	}
	if reflect.DeepEqual(a, b) {
		return nil
	}
	return op(ops, "replace", path, b)
}

// escapePointer escapes a key for a JSON Pointer (RFC 6901): "~" as "~0",
// "/" as "~1" (so nitropod.io/enclave-cpu becomes nitropod.io~1enclave-cpu).
func escapePointer(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// PodPatch returns the JSON Patch that turns the Pod in raw (decoded as
// orig) into out. Parts Convert changes (annotations, runtimeClassName, each
// container's resources and volumeMounts) are patched as whole members,
// which is cheap; if anything else differs it falls back to CreatePatch over
// the whole documents, so the patch is always complete.
func PodPatch(raw []byte, orig, out *corev1.Pod) ([]PatchOp, error) {
	return podPatch(raw, orig.DeepCopy(), out)
}

// podPatch is PodPatch that may modify orig (the handler's own copy).
func podPatch(raw []byte, orig, out *corev1.Pod) ([]PatchOp, error) {
	var ops []PatchOp
	set := func(path string, present bool, v any) error {
		if !present {
			return op(&ops, "remove", path, nil)
		}
		return op(&ops, "add", path, v) // add replaces an existing member
	}
	check := orig // members are compared before they are overwritten
	if !equality.Semantic.DeepEqual(orig.Annotations, out.Annotations) {
		if len(orig.Annotations) == 0 {
			if err := set("/metadata/annotations", len(out.Annotations) > 0, out.Annotations); err != nil {
				return nil, err
			}
		} else {
			keys := make([]string, 0, len(orig.Annotations)+len(out.Annotations))
			for k := range orig.Annotations {
				keys = append(keys, k)
			}
			for k := range out.Annotations {
				if _, ok := orig.Annotations[k]; !ok {
					keys = append(keys, k)
				}
			}
			sort.Strings(keys)
			for _, k := range keys {
				v, ok := out.Annotations[k]
				if ov, had := orig.Annotations[k]; had && ok && ov == v {
					continue
				}
				if err := set("/metadata/annotations/"+escapePointer(k), ok, v); err != nil {
					return nil, err
				}
			}
		}
		check.Annotations = out.Annotations
	}
	if !equality.Semantic.DeepEqual(orig.Spec.RuntimeClassName, out.Spec.RuntimeClassName) {
		if err := set("/spec/runtimeClassName", out.Spec.RuntimeClassName != nil, out.Spec.RuntimeClassName); err != nil {
			return nil, err
		}
		check.Spec.RuntimeClassName = out.Spec.RuntimeClassName
	}
	if len(orig.Spec.Containers) == len(out.Spec.Containers) {
		for i := range out.Spec.Containers {
			a, b := &orig.Spec.Containers[i], &out.Spec.Containers[i]
			p := "/spec/containers/" + strconv.Itoa(i)
			if !equality.Semantic.DeepEqual(a.Resources, b.Resources) {
				if err := set(p+"/resources", true, b.Resources); err != nil {
					return nil, err
				}
				check.Spec.Containers[i].Resources = b.Resources
			}
			if !equality.Semantic.DeepEqual(a.VolumeMounts, b.VolumeMounts) {
				if err := set(p+"/volumeMounts", len(b.VolumeMounts) > 0, b.VolumeMounts); err != nil {
					return nil, err
				}
				check.Spec.Containers[i].VolumeMounts = b.VolumeMounts
			}
		}
	}
	// reflect.DeepEqual is much cheaper than Semantic here and exact: out's
	// other members are deep copies of orig's (Convert copies its input)
	// and check now holds out's patched ones. A false "different" only
	// costs the full diff.
	if reflect.DeepEqual(check, out) {
		return ops, nil
	}
	to, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("encoding converted pod: %w", err)
	}
	a, err := decodeJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("decoding original object: %w", err)
	}
	b, err := decodeJSON(to)
	if err != nil {
		return nil, fmt.Errorf("decoding patched object: %w", err)
	}
	// Encoding the typed Pod writes members the request did not have
	// (status: {}, creationTimestamp: null, resources: {}): they carry no
	// change, so the patch leaves them out rather than adding them.
	b = dropAddedEmpty(a, b)
	ops = ops[:0] // the full diff replaces the fast path's operations
	if err := diff(&ops, "", a, b); err != nil {
		return nil, err
	}
	return ops, nil
}

// dropAddedEmpty returns b without the members that a lacks and that hold
// nothing (null, {}, [], "" or false, or objects of only such members).
func dropAddedEmpty(a, b any) any {
	if as, ok := a.([]any); ok {
		bs, ok := b.([]any)
		if !ok || len(as) != len(bs) {
			return b
		}
		out := make([]any, len(bs))
		for i := range bs {
			out[i] = dropAddedEmpty(as[i], bs[i])
		}
		return out
	}
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if !aok || !bok {
		return b
	}
	out := make(map[string]any, len(bm))
	for k, v := range bm {
		if av, ok := am[k]; ok {
			out[k] = dropAddedEmpty(av, v)
		} else if !isEmptyJSON(v) {
			out[k] = v
		}
	}
	return out
}

func isEmptyJSON(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case bool:
		return !x
	case []any:
		return len(x) == 0
	case map[string]any:
		for _, e := range x {
			if !isEmptyJSON(e) {
				return false
			}
		}
		return true
	}
	return false
}
