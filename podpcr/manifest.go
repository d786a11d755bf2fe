// Package podpcr computes, from a workload manifest and a container image,
// the measurements (PCR0, PCR1, PCR2) that each enclave container of its
// Pod template gets on a node: `nitropod pcr -f`.
//
// It runs the node's own code on the template: the webhook's conversion
// (webhook.Convert, which writes the enclaves and delivery annotations),
// the OCI spec containerd's CRI would write for the container (built with
// containerd's own spec options, fed the container config kubelet would
// send), the shim's planning (shim.PlanContainer, which splits measured
// from delivered configuration) and the shim's EIF recipe (shim.BuildEIF)
// over the image unpacked with containerd's own layer applier. Whatever
// those derive from the template — literal env, security context,
// annotations — is therefore measured here exactly as on the node.
//
// What differs per Pod (its name, hostname, Secret values, service links,
// device allocation) is delivered at start and never measured, so one
// template has one set of measurements.
package podpcr

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// MaxManifestBytes bounds a manifest.
const MaxManifestBytes = 16 << 20

// Template is the Pod template of one workload in a manifest.
type Template struct {
	// Kind and Name identify the workload ("Deployment", "web").
	Kind, Name string
	// Pod is a Pod made from the template, as its controller would create it.
	Pod *corev1.Pod
}

// Templates reads the Pod templates of every Pod, Deployment, StatefulSet,
// DaemonSet, ReplicaSet, Job and CronJob in a (multi-document) YAML or JSON
// manifest. Other kinds are skipped; a manifest with none is an error.
func Templates(manifest []byte) ([]Template, error) {
	if len(manifest) > MaxManifestBytes {
		return nil, fmt.Errorf("manifest is %d bytes, more than %d", len(manifest), MaxManifestBytes)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	var out []Template
	var kinds []string
	for i := 0; ; i++ {
		var raw map[string]any
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("reading manifest document %d: %w", i+1, err)
		}
		if raw == nil {
			continue
		}
		b, err := yaml.Marshal(raw)
		if err != nil {
			return nil, err
		}
		kind, _ := raw["kind"].(string)
		kinds = append(kinds, kind)
		t, ok, err := template(kind, b)
		if err != nil {
			return nil, fmt.Errorf("manifest document %d (%s): %w", i+1, kind, err)
		}
		if ok {
			out = append(out, t)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the manifest has no Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob (kinds found: %q)", kinds)
	}
	return out, nil
}

func template(kind string, b []byte) (Template, bool, error) {
	var name string
	var tpl corev1.PodTemplateSpec
	switch kind {
	case "Pod":
		var p corev1.Pod
		if err := yaml.UnmarshalStrict(b, &p); err != nil {
			return Template{}, false, err
		}
		return Template{Kind: kind, Name: p.Name, Pod: &p}, true, nil
	case "Deployment":
		var o appsv1.Deployment
		if err := yaml.UnmarshalStrict(b, &o); err != nil {
			return Template{}, false, err
		}
		name, tpl = o.Name, o.Spec.Template
	case "StatefulSet":
		var o appsv1.StatefulSet
		if err := yaml.UnmarshalStrict(b, &o); err != nil {
			return Template{}, false, err
		}
		name, tpl = o.Name, o.Spec.Template
	case "DaemonSet":
		var o appsv1.DaemonSet
		if err := yaml.UnmarshalStrict(b, &o); err != nil {
			return Template{}, false, err
		}
		name, tpl = o.Name, o.Spec.Template
	case "ReplicaSet":
		var o appsv1.ReplicaSet
		if err := yaml.UnmarshalStrict(b, &o); err != nil {
			return Template{}, false, err
		}
		name, tpl = o.Name, o.Spec.Template
	case "Job":
		var o batchv1.Job
		if err := yaml.UnmarshalStrict(b, &o); err != nil {
			return Template{}, false, err
		}
		name, tpl = o.Name, o.Spec.Template
	case "CronJob":
		var o batchv1.CronJob
		if err := yaml.UnmarshalStrict(b, &o); err != nil {
			return Template{}, false, err
		}
		name, tpl = o.Name, o.Spec.JobTemplate.Spec.Template
	default:
		return Template{}, false, nil
	}
	pod := &corev1.Pod{ObjectMeta: tpl.ObjectMeta, Spec: tpl.Spec}
	pod.TypeMeta = corev1.Pod{}.TypeMeta
	if pod.Name == "" {
		pod.Name = name
	}
	return Template{Kind: kind, Name: name, Pod: pod}, true, nil
}
