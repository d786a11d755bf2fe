package shim_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/attestation"
	"github.com/nitropod/nitropod/contract"
)

// TestAttestationPortAnnotation: a container's nitropod.io/attestation-port
// moves init's attestation API (the port is measured into the EIF): the
// app gets a document on the chosen port, whose nonce is the one it sent,
// and nothing answers on the default port.
func TestAttestationPortAnnotation(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	nonce := base64.StdEncoding.EncodeToString([]byte("port-test-nonce"))
	script := `wget -q -O /tmp/doc --header 'Content-Type: application/json' --post-data '{"nonce":"` + nonce + `"}' http://127.0.0.1:8443/v1/attestation && echo "DOC $(cat /tmp/doc)"
wget -q -O- -T 5 http://127.0.0.1:9910/v1/attestation >/dev/null 2>&1 && echo DEFAULT=open || echo DEFAULT=closed`
	cmd := e.run(ctx, []string{"--annotation", contract.AttestationPortAnnotation + "=8443"}, busyboxRef, "attport", "sh", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	var doc []byte
	for _, l := range strings.Split(string(out), "\n") {
		if js, ok := strings.CutPrefix(l, "DOC "); ok {
			var r struct {
				Document []byte `json:"document"`
			}
			if err := json.Unmarshal([]byte(js), &r); err != nil {
				t.Fatalf("attestation API answer %q: %v", js, err)
			}
			doc = r.Document
		}
	}
	if doc == nil {
		t.Fatalf("no document from the API on port 8443; output:\n%s", out)
	}
	d, err := attestation.Parse(doc)
	if err != nil {
		t.Fatalf("parsing the document: %v", err)
	}
	if string(d.Document.Nonce) != "port-test-nonce" {
		t.Errorf("document nonce %q, want the app's", d.Document.Nonce)
	}
	if !strings.Contains(string(out), "DEFAULT=closed") {
		t.Errorf("the default port 9910 answered although the API moved to 8443; output:\n%s", out)
	}
}
