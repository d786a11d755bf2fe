package local

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nitropod/nitropod/enclave"
)

func TestParsePublish(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want enclave.PortMapping
		err  string
	}{
		{in: "80", want: enclave.PortMapping{HostAddr: "127.0.0.1:80", EnclavePort: 80}},
		{in: "8080:80", want: enclave.PortMapping{HostAddr: "127.0.0.1:8080", EnclavePort: 80}},
		{in: "0.0.0.0:8080:80/tcp", want: enclave.PortMapping{HostAddr: "0.0.0.0:8080", EnclavePort: 80}},
		{in: "[::1]:8080:80", want: enclave.PortMapping{HostAddr: "[::1]:8080", EnclavePort: 80}},
		{in: "0:80", want: enclave.PortMapping{HostAddr: "127.0.0.1:0", EnclavePort: 80}},
		{in: "8080:0", err: "enclave port"},
		{in: "x:80", err: "host port"},
		{in: "localhost:1:80", err: "not an IP address"},
		{in: "8080:70000", err: "enclave port"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePublish(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParsePublish(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// The seed document's nginx Pod, verbatim apart from the line numbers.
const nginxPod = `apiVersion: v1
kind: Pod
metadata:
  name: nginx-pod
  labels:
    name: nginx-pod
    nitro.k8s.anjuna.io/managed: "yes"
spec:
  containers:
  - name: nginx-pod
    image: nginx:latest
    imagePullPolicy: Always
    env:
    - name: ANJ_ENCLAVE_DEBUG_MODE
      value: "yes"
    resources:
      limits:
        memory: "2048Mi"
        cpu: "2"
    ports:
    - containerPort: 80
`

func TestParsePod(t *testing.T) {
	got, err := ParsePod([]byte(nginxPod))
	if err != nil {
		t.Fatal(err)
	}
	want := &Pod{
		Image: "nginx:latest", Env: []string{"ANJ_ENCLAVE_DEBUG_MODE=yes"},
		CPUs: 2, MemoryMiB: 2048, Debug: true,
		Ports: []enclave.PortMapping{{HostAddr: "127.0.0.1:80", EnclavePort: 80}},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestParsePodErrors(t *testing.T) {
	for _, tc := range []struct{ name, manifest, err string }{
		{"fractional cpu", strings.Replace(nginxPod, `cpu: "2"`, `cpu: "500m"`, 1), "whole number of vCPUs"},
		{"no containers", "kind: Pod\nspec: {}\n", "spec.containers is empty"},
		{"not a pod", "kind: Deployment\n", "want Pod"},
		{"valueFrom", strings.Replace(nginxPod, `value: "yes"`, "valueFrom: {secretKeyRef: {name: s, key: k}}", 1), "valueFrom"},
		{"garbage", ":::", "reading pod manifest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePod([]byte(tc.manifest))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePod = %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

func TestPrepareEIFErrors(t *testing.T) {
	dir := t.TempDir()
	initBin := filepath.Join(dir, "nitropod-init")
	_ = os.WriteFile(initBin, []byte("x"), 0o755)
	noKernel := filepath.Join(dir, "blobs")
	_ = os.MkdirAll(noKernel, 0o755)
	_ = os.WriteFile(filepath.Join(noKernel, "cmdline"), []byte("console=ttyS0"), 0o644)
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no image", Options{}, "give exactly one image"},
		{"two images", Options{Ref: "a", EIF: "b"}, "give exactly one image"},
		{"missing eif", Options{EIF: filepath.Join(dir, "none.eif")}, "no such file"},
		{"no init", Options{OCILayout: dir, Blobs: noKernel}, "no nitropod-init binary"},
		{"missing init", Options{OCILayout: dir, Blobs: noKernel, Init: filepath.Join(dir, "nope")}, "make build, or pass --init"},
		{"missing kernel", Options{OCILayout: dir, Blobs: noKernel, Init: initBin}, "no kernel file bzImage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := PrepareEIF(context.Background(), tc.opts, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func FuzzParsePod(f *testing.F) {
	f.Add([]byte(nginxPod))
	f.Add([]byte(`{"kind":"Pod","spec":{"containers":[{"name":"a","image":"b","ports":[{"containerPort":8080,"hostPort":80}]}]}}`))
	f.Add([]byte("kind: Pod\nspec:\n  containers:\n  - image: x\n    resources: {limits: {cpu: 1e3, memory: 1Ei}}\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := ParsePod(in)
		if err != nil {
			return
		}
		if p.Image == "" || p.CPUs < 0 || p.MemoryMiB < 0 {
			t.Fatalf("ParsePod accepted %+v", p)
		}
	})
}

func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{"80", "8080:80", "127.0.0.1:8080:80/tcp", "[::1]:0:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParsePublish(s)
		if err != nil {
			return
		}
		if m.EnclavePort == 0 {
			t.Fatalf("ParsePublish(%q) accepted enclave port 0", s)
		}
	})
}
