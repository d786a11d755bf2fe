package main

import (
	"strings"
	"testing"
)

const multi = `apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
---
# only a comment
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: one}
spec:
  containers: [{name: c, image: x, ports: [{containerPort: 9000}]}]
`

func TestParseObjects(t *testing.T) {
	objs, err := parseObjects([]byte(multi))
	if err != nil {
		t.Fatal(err)
	}
	if got := describe(objs); got != "ConfigMap cfg, Deployment web, Service web, Pod one" {
		t.Fatalf("describe = %q", got)
	}
	if got := strings.Join(namespaces(objs), ","); got != "default,shop" {
		t.Fatalf("namespaces = %q", got)
	}
	tgt, err := defaultTarget("", objs)
	if err != nil || tgt.String() != "service/shop/web:80" {
		t.Fatalf("default target = %v, %v; want the first Service", tgt, err)
	}
	tgt, err = defaultTarget("", objs[3:])
	if err != nil || tgt.String() != "pod/one:9000" {
		t.Fatalf("default target = %v, %v; want the Pod's first port", tgt, err)
	}
	if tgt, err := defaultTarget("", objs[:1]); err != nil || tgt.kind != "" {
		t.Fatalf("a file without Pod or Service forwards %v, %v; want nothing", tgt, err)
	}
	for in, want := range map[string]string{
		"svc/shop/web":    "service/shop/web:80",
		"pod/one":         "pod/one:9000",
		"pod/other:8443":  "pod/other:8443",
		"service/web:web": "service/web:web",
	} {
		if tgt, err := defaultTarget(in, objs); err != nil || tgt.String() != want {
			t.Errorf("-forward %s = %v, %v; want %s", in, tgt, err, want)
		}
	}
	for _, in := range []string{"deployment/web:80", "pod/", "pod/x/y/z:1", "pod/unknown"} {
		if _, err := defaultTarget(in, objs); err == nil {
			t.Errorf("-forward %s: no error", in)
		}
	}
	if _, err := parseObjects([]byte("kind: Pod\n")); err == nil || !strings.Contains(err.Error(), "metadata.name") {
		t.Errorf("a document without a name: %v", err)
	}
	if _, err := parseObjects([]byte("# nothing\n")); err == nil {
		t.Error("an empty file: no error")
	}
}
