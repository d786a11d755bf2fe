package kubetest

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/internal/testenv"
)

func TestClusterStarts(t *testing.T) {
	testenv.Integration(t)
	c := Start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	resp, err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/default/serviceaccounts/default", nil)
	if err != nil || resp.Error() != nil {
		t.Fatalf("default service account: %v %v", err, resp.Error())
	}
	// RBAC is on: an unknown token is refused.
	bad := *c
	bad.Token = "not-a-token"
	resp, err = bad.Do(ctx, http.MethodGet, "/api/v1/namespaces", nil)
	if err != nil || resp.Status != http.StatusUnauthorized {
		t.Fatalf("bad token: %v status %d", err, resp.Status)
	}
	out, stderr, err := c.Kubectl(t, ctx, nil, "get", "namespace", "default", "-o", "name")
	if err != nil || strings.TrimSpace(out) != "namespace/default" {
		t.Fatalf("kubectl: %v %q %q", err, out, stderr)
	}
}
