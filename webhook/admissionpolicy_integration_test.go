package webhook

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/kubetest"
	"github.com/nitropod/nitropod/internal/testenv"
)

// TestIntegrationAdmissionPolicy applies the chart's ValidatingAdmissionPolicy
// (rendered by helm from deploy/helm) to a real kube-apiserver and checks
// that it refuses what the mutating webhook never sees: Pods that use the
// nitro RuntimeClass without the managed label, forged nitropod.io/enclaves
// annotations, NITROPOD_* env, and changes to the annotation after
// admission. The webhook itself is not running here, so the Pods below
// reach the policy as their authors wrote them.
func TestIntegrationAdmissionPolicy(t *testing.T) {
	testenv.Integration(t)
	c := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	chart := filepath.Join(testenv.RepoRoot(), "deploy", "helm", "nitropod")
	out, err := exec.CommandContext(ctx, testenv.Binary(t, "helm"), "template", "nitropod", chart,
		"--show-only", "templates/validatingadmissionpolicy.yaml",
		"--set", "license.enforce=false").CombinedOutput() // the policy does not depend on the licence settings
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	if _, stderr, err := c.Kubectl(t, ctx, out, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply of the chart's policy: %v\n%s", err, stderr)
	}
	must(t)(c.Create(ctx, "/apis/node.k8s.io/v1/runtimeclasses", map[string]any{
		"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
		"metadata": map[string]any{"name": nitropod.RuntimeClassName}, "handler": nitropod.RuntimeClassName,
	}))

	type pod = map[string]any
	mk := func(name string, labels, annotations map[string]string, runtimeClass string, env ...map[string]any) pod {
		ctr := map[string]any{"name": "app", "image": "busybox"}
		if len(env) > 0 {
			ctr["env"] = env
		}
		spec := map[string]any{"containers": []any{ctr}}
		if runtimeClass != "" {
			spec["runtimeClassName"] = runtimeClass
		}
		return pod{"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": name, "labels": labels, "annotations": annotations}, "spec": spec}
	}
	managed := map[string]string{nitropod.ManagedLabel: nitropod.ManagedValue}
	enclaves := map[string]string{nitropod.EnclavesAnnotation: `{"app":{"cpu":2,"memoryMiB":512}}`}

	create := func(p pod, dryRun bool) error {
		path := "/api/v1/namespaces/default/pods"
		if dryRun {
			path += "?dryRun=All"
		}
		resp, err := c.Create(ctx, path, p)
		if err != nil {
			return err
		}
		return resp.Error()
	}

	// Policies take effect asynchronously: wait for the first refusal.
	unlabelled := mk("unlabelled", nil, nil, nitropod.RuntimeClassName)
	for {
		err := create(unlabelled, true)
		if err != nil && strings.Contains(err.Error(), "must carry the label") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the policy never refused a nitro Pod without the label; last answer: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}

	for _, tc := range []struct {
		name string
		pod  pod
		want string // "" admitted
	}{
		{"plain Pod", mk("plain", nil, nil, ""), ""},
		{"managed nitro Pod", mk("managed", managed, enclaves, nitropod.RuntimeClassName), ""},
		{"nitro without the label", mk("nolabel", nil, nil, nitropod.RuntimeClassName), "must carry the label nitro.k8s.anjuna.io/managed"},
		{"label with another value", mk("labelno", map[string]string{nitropod.ManagedLabel: "no"}, nil, nitropod.RuntimeClassName), "must carry the label"},
		{"forged enclaves annotation", mk("forged", nil, enclaves, ""), "is written by the nitropod webhook"},
		{"NITROPOD_ env in a nitro Pod", mk("env", managed, enclaves, nitropod.RuntimeClassName,
			map[string]any{"name": nitropod.EnvCPUIDs, "value": "0-7"}), "env names starting with NITROPOD_ are reserved"},
		{"NITROPOD_ env in a plain Pod", mk("plainenv", nil, nil, "", map[string]any{"name": "NITROPOD_X", "value": "1"}), ""},
	} {
		err := create(tc.pod, true)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}

	// After admission the annotation is fixed; other annotations are not.
	if err := create(mk("running", managed, enclaves, nitropod.RuntimeClassName), false); err != nil {
		t.Fatal(err)
	}
	patch := func(body string) error {
		_, stderr, err := c.Kubectl(t, ctx, nil, "-n", "default", "patch", "pod", "running", "--type=merge", "-p", body)
		if err != nil {
			return errorString(stderr)
		}
		return nil
	}
	if err := patch(`{"metadata":{"annotations":{"nitropod.io/enclaves":"{\"app\":{\"cpu\":64,\"memoryMiB\":65536}}"}}}`); err == nil || !strings.Contains(err.Error(), "cannot change after admission") {
		t.Errorf("changing nitropod.io/enclaves: error %v, want a refusal", err)
	}
	if err := patch(`{"metadata":{"annotations":{"nitropod.io/enclaves":null}}}`); err == nil || !strings.Contains(err.Error(), "cannot change after admission") {
		t.Errorf("removing nitropod.io/enclaves: error %v, want a refusal", err)
	}
	if err := patch(`{"metadata":{"labels":{"nitro.k8s.anjuna.io/managed":null}}}`); err == nil || !strings.Contains(err.Error(), "must carry the label") {
		t.Errorf("removing the managed label: error %v, want a refusal", err)
	}
	if err := patch(`{"metadata":{"annotations":{"team":"a"}}}`); err != nil {
		t.Errorf("an unrelated annotation: %v", err)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
