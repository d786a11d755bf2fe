package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Response is an apiserver answer.
type Response struct {
	// Status is the HTTP status code.
	Status int
	// Body is the response body (JSON).
	Body []byte
	// Warnings are the texts of the Warning headers (admission warnings).
	Warnings []string
}

// Decode unmarshals the body into v.
func (r *Response) Decode(v any) error { return json.Unmarshal(r.Body, v) }

// Error returns nil for a 2xx status, else an error with the body's message.
func (r *Response) Error() error {
	if r.Status/100 == 2 {
		return nil
	}
	var st struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(r.Body, &st) == nil && st.Message != "" {
		return fmt.Errorf("status %d: %s", r.Status, st.Message)
	}
	return fmt.Errorf("status %d: %s", r.Status, bytes.TrimSpace(r.Body))
}

// Do sends a request as AdminUser. A body that is not []byte is marshalled
// as JSON; PATCH bodies are sent as JSON merge patches.
func (c *ControlPlane) Do(ctx context.Context, method, path string, body any) (*Response, error) {
	var rd io.Reader
	if body != nil {
		b, ok := body.([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(body); err != nil {
				return nil, fmt.Errorf("encoding request body: %w", err)
			}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		ct := "application/json"
		if method == http.MethodPatch {
			ct = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", method, path, err)
	}
	return &Response{Status: resp.StatusCode, Body: b, Warnings: warnings(resp.Header)}, nil
}

// Create POSTs obj to path and fails unless the apiserver stored it.
func (c *ControlPlane) Create(ctx context.Context, path string, obj any) (*Response, error) {
	resp, err := c.Do(ctx, http.MethodPost, path, obj)
	if err != nil {
		return nil, err
	}
	return resp, resp.Error()
}

// EnsureServiceAccount creates the ServiceAccount "default" in ns unless it
// exists (without a kube-controller-manager nobody else does).
func (c *ControlPlane) EnsureServiceAccount(ctx context.Context, ns string) error {
	resp, err := c.Do(ctx, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts",
		map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default"}})
	if err != nil {
		return fmt.Errorf("creating default service account: %w", err)
	}
	if resp.Status != http.StatusConflict {
		if err := resp.Error(); err != nil {
			return fmt.Errorf("creating default service account: %w", err)
		}
	}
	return nil
}

// warnings extracts the texts of RFC 7234 Warning headers
// (`299 - "text"`), as kube-apiserver sends admission warnings.
func warnings(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Warning") {
		_, rest, ok := strings.Cut(v, " - ")
		if !ok {
			out = append(out, v)
			continue
		}
		if s, err := strconv.Unquote(rest); err == nil {
			out = append(out, s)
		} else {
			out = append(out, rest)
		}
	}
	return out
}
