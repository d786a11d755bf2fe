package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/sirupsen/logrus"
)

// Bootstrap lets the webhook run in a cluster without cert-manager: when the
// serving certificate file does not exist, Run makes a CA and a serving
// certificate, writes them, and puts the CA into the caBundle of every
// webhook of a MutatingWebhookConfiguration. With an existing certificate it
// only (re)patches the caBundle from CAFile, if that exists. Every replica
// must share the files (one Secret or volume), or replicas serve with
// different CAs; with several replicas prefer a CA-managed Secret.
type Bootstrap struct {
	// DNSNames and IPs go into the serving certificate
	// (<service>.<namespace>.svc for an in-cluster Service).
	DNSNames []string
	IPs      []net.IP
	// CAFile is where the CA certificate is written (optional).
	CAFile string
	// ValidFor is the certificates' lifetime (0: ten years).
	ValidFor time.Duration
	// WebhookConfigName is the MutatingWebhookConfiguration to patch ("": none).
	WebhookConfigName string
	// API reaches kube-apiserver (nil: the in-cluster service account).
	API *APIClient
}

func (b *Bootstrap) ensure(ctx context.Context, certFile, keyFile string, log logrus.FieldLogger) error {
	var ca []byte
	if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
		validFor := b.ValidFor
		if validFor <= 0 {
			validFor = 10 * 365 * 24 * time.Hour
		}
		certs, err := GenerateCerts(b.DNSNames, b.IPs, validFor)
		if err != nil {
			return err
		}
		if err := certs.WriteFiles(certFile, keyFile, b.CAFile); err != nil {
			return err
		}
		log.WithFields(logrus.Fields{"cert": certFile, "dns_names": b.DNSNames}).Info("generated a CA and serving certificate")
		ca = certs.CAPEM
	} else if err != nil {
		return fmt.Errorf("checking %s: %w", certFile, err)
	} else if b.CAFile != "" {
		if ca, err = os.ReadFile(b.CAFile); err != nil {
			return fmt.Errorf("reading ca: %w", err)
		}
	}
	if b.WebhookConfigName == "" || ca == nil {
		return nil
	}
	api := b.API
	if api == nil {
		var err error
		if api, err = InClusterAPI(); err != nil {
			return err
		}
	}
	n, err := api.PatchCABundle(ctx, b.WebhookConfigName, ca)
	if err != nil {
		return err
	}
	log.WithFields(logrus.Fields{"configuration": b.WebhookConfigName, "webhooks": n}).Info("patched caBundle")
	return nil
}

// APIClient is the little of kube-apiserver that the webhook needs, over
// plain HTTPS with a bearer token.
type APIClient struct {
	// Server is the base URL ("https://10.0.0.1:443").
	Server string
	// Token is the bearer token.
	Token string
	// CAPEM verifies the server's certificate.
	CAPEM []byte
}

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// InClusterAPI uses the Pod's service account, like client-go's in-cluster
// configuration.
func InClusterAPI() (*APIClient, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset); give a kubeconfig or drop --webhook-config-name")
	}
	token, err := os.ReadFile(serviceAccountDir + "/token")
	if err != nil {
		return nil, fmt.Errorf("reading service account token: %w", err)
	}
	ca, err := os.ReadFile(serviceAccountDir + "/ca.crt")
	if err != nil {
		return nil, fmt.Errorf("reading service account ca: %w", err)
	}
	return &APIClient{Server: "https://" + net.JoinHostPort(host, port), Token: string(bytes.TrimSpace(token)), CAPEM: ca}, nil
}

func (c *APIClient) do(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.CAPEM) {
		return nil, errors.New("no certificate in the api server's ca")
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, c.Server+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(out))
	}
	return out, nil
}

// PatchCABundle sets the caBundle of every webhook of the named
// MutatingWebhookConfiguration and returns how many it patched.
func (c *APIClient) PatchCABundle(ctx context.Context, name string, ca []byte) (int, error) {
	path := "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/" + name
	b, err := c.do(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return 0, fmt.Errorf("reading webhook configuration: %w", err)
	}
	var cfg struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Webhooks []json.RawMessage `json:"webhooks"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return 0, fmt.Errorf("decoding webhook configuration: %w", err)
	}
	// The test op makes a concurrent change fail the patch instead of
	// patching the wrong list.
	rv, _ := json.Marshal(cfg.Metadata.ResourceVersion)
	ops := []PatchOp{{Op: "test", Path: "/metadata/resourceVersion", Value: rv}}
	bundle, _ := json.Marshal(ca) // []byte marshals as base64, as caBundle expects
	for i := range cfg.Webhooks {
		ops = append(ops, PatchOp{Op: "add", Path: fmt.Sprintf("/webhooks/%d/clientConfig/caBundle", i), Value: bundle})
	}
	patch, _ := json.Marshal(ops)
	if _, err := c.do(ctx, http.MethodPatch, path, "application/json-patch+json", patch); err != nil {
		return 0, fmt.Errorf("patching caBundle: %w", err)
	}
	return len(cfg.Webhooks), nil
}
