package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// object is one document of the applied file.
type object struct {
	Kind, Namespace, Name string
	// Ports: a Pod's container ports, a Service's ports (name, number).
	Ports []port
}

type port struct {
	Name   string
	Number int
}

// clusterScoped kinds have no namespace.
var clusterScoped = map[string]bool{
	"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true, "PersistentVolume": true,
	"StorageClass": true, "PriorityClass": true, "CustomResourceDefinition": true, "RuntimeClass": true,
}

// parseObjects reads every document of a multi-document YAML (or JSON)
// file; empty documents are skipped, a List's items are expanded.
func parseObjects(data []byte) ([]object, error) {
	type meta struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	}
	type doc struct {
		Kind     string `json:"kind"`
		Metadata meta   `json:"metadata"`
		Spec     struct {
			Containers []struct {
				Ports []struct {
					Name          string `json:"name"`
					ContainerPort int    `json:"containerPort"`
				} `json:"ports"`
			} `json:"containers"`
			Ports []struct {
				Name string `json:"name"`
				Port int    `json:"port"`
			} `json:"ports"`
		} `json:"spec"`
		Items []doc `json:"items"`
	}
	var objs []object
	var add func(d doc, n int) error
	add = func(d doc, n int) error {
		if d.Kind == "" && d.Metadata.Name == "" {
			return nil // an empty document
		}
		if strings.HasSuffix(d.Kind, "List") {
			for _, it := range d.Items {
				if err := add(it, n); err != nil {
					return err
				}
			}
			return nil
		}
		if d.Kind == "" || d.Metadata.Name == "" {
			return fmt.Errorf("document %d: a %q named %q: every document needs kind and metadata.name", n, d.Kind, d.Metadata.Name)
		}
		o := object{Kind: d.Kind, Name: d.Metadata.Name, Namespace: d.Metadata.Namespace}
		if o.Namespace == "" && !clusterScoped[o.Kind] {
			o.Namespace = "default"
		}
		switch o.Kind {
		case "Pod":
			for _, c := range d.Spec.Containers {
				for _, p := range c.Ports {
					o.Ports = append(o.Ports, port{p.Name, p.ContainerPort})
				}
			}
		case "Service":
			for _, p := range d.Spec.Ports {
				o.Ports = append(o.Ports, port{p.Name, p.Port})
			}
		}
		objs = append(objs, o)
		return nil
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for n := 1; ; n++ {
		var d doc
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		if err := add(d, n); err != nil {
			return nil, err
		}
	}
	if len(objs) == 0 {
		return nil, errors.New("no Kubernetes objects in the file")
	}
	return objs, nil
}

// describe names the file's objects, e.g. "ConfigMap web-config, Deployment web, Service web".
func describe(objs []object) string {
	var s []string
	for _, o := range objs {
		s = append(s, o.Kind+" "+o.Name)
	}
	if len(s) > 6 {
		s = append(s[:6], fmt.Sprintf("and %d more", len(s)-6))
	}
	return strings.Join(s, ", ")
}

// namespaces are the namespaces of the file's objects, sorted.
func namespaces(objs []object) []string {
	seen := map[string]bool{}
	var ns []string
	for _, o := range objs {
		if o.Namespace != "" && !seen[o.Namespace] {
			seen[o.Namespace] = true
			ns = append(ns, o.Namespace)
		}
	}
	sort.Strings(ns)
	return ns
}

// target is what the local port forwards to.
type target struct {
	kind      string // "pod" or "service"; "" forwards nothing
	namespace string
	name      string
	port      string // a number, or a port name
}

func (t target) String() string {
	n := t.name
	if t.namespace != "default" {
		n = t.namespace + "/" + n
	}
	return t.kind + "/" + n + ":" + t.port
}

// defaultTarget parses -forward (pod/[NS/]NAME[:PORT] or
// service/[NS/]NAME[:PORT]); empty picks the file's first Service, else its
// first Pod, at its first port (a Pod without declared ports: 80). A file
// with neither forwards nothing.
func defaultTarget(flagValue string, objs []object) (target, error) {
	if flagValue == "" {
		for _, kind := range []string{"Service", "Pod"} {
			for _, o := range objs {
				if o.Kind != kind {
					continue
				}
				p := "80"
				if len(o.Ports) > 0 {
					p = strconv.Itoa(o.Ports[0].Number)
				}
				return target{kind: strings.ToLower(kind), namespace: o.Namespace, name: o.Name, port: p}, nil
			}
		}
		return target{}, nil
	}
	bad := func(why string) (target, error) {
		return target{}, fmt.Errorf("-forward %q: %s; want pod/NAME:PORT or service/NAME:PORT (NAMESPACE/NAME for another namespace)", flagValue, why)
	}
	kind, rest, ok := strings.Cut(flagValue, "/")
	switch kind {
	case "pod", "po", "pods":
		kind = "pod"
	case "service", "svc", "services":
		kind = "service"
	default:
		return bad("the kind is not pod or service")
	}
	if !ok || rest == "" {
		return bad("no name")
	}
	t := target{kind: kind, namespace: "default"}
	name, p, hasPort := strings.Cut(rest, ":")
	if ns, n, ok := strings.Cut(name, "/"); ok {
		t.namespace, name = ns, n
	}
	if name == "" || t.namespace == "" || strings.Contains(name, "/") {
		return bad("bad name")
	}
	t.name = name
	if !hasPort || p == "" {
		p = ""
		for _, o := range objs {
			if strings.ToLower(o.Kind) == kind && o.Name == name && o.Namespace == t.namespace && len(o.Ports) > 0 {
				p = strconv.Itoa(o.Ports[0].Number)
				break
			}
		}
		if p == "" {
			return bad("no port given and the file declares none for it")
		}
	}
	t.port = p
	return t, nil
}
