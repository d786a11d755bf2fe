//go:build e2e

package e2e

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nitropod/nitropod/attestation"
)

// attestationAgainstCluster: an enclave Pod's app asks init's attestation
// API for a document; the test verifies it with the node's emulation root
// and the measurements the cluster reports for that Pod (the first line of
// its log), and with the nonce the app sent.
func (e *env) attestationAgainstCluster() {
	t := e.t
	const name = "attest"
	nonce := []byte("e2e-attestation-nonce")
	script := `wget -q -O /tmp/doc --header 'Content-Type: application/json' --post-data '{"nonce":"` +
		base64.StdEncoding.EncodeToString(nonce) + `"}' http://127.0.0.1:9910/v1/attestation && echo "DOC $(cat /tmp/doc)"; exec sleep 3600`
	e.mustKubectl(busyboxEnclavePod(name, "2", []string{"sh", "-c", script}), "apply", "-f", "-")
	defer e.deleteEnclavePod(name)
	e.waitLogs(name, "DOC ", 5*time.Minute)
	logs := e.mustKubectl("", "logs", name)

	m := pcrLine.FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no measurements line in the Pod's log:\n%s", logs)
	}
	pcrs := map[int][]byte{}
	for i, h := range m[1:4] {
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatalf("PCR%d %q in the log: %v", i, h, err)
		}
		pcrs[i] = b
	}
	var doc struct {
		Document []byte `json:"document"`
	}
	for _, l := range strings.Split(logs, "\n") {
		if js, ok := strings.CutPrefix(l, "DOC "); ok {
			if err := json.Unmarshal([]byte(js), &doc); err != nil {
				t.Fatalf("the attestation API's answer %q: %v", js, err)
			}
		}
	}
	if len(doc.Document) == 0 {
		t.Fatalf("no document in the Pod's log:\n%s", logs)
	}
	rootPEM, err := os.ReadFile(filepath.Join(e.runDir, "attestation", attestation.EmulationRootFile))
	if err != nil {
		t.Fatalf("the node's emulation root: %v", err)
	}
	root, err := attestation.ParseRootPEM(rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	d, err := attestation.Verify(doc.Document, attestation.VerifyOptions{Root: root, PCRs: pcrs, Nonce: nonce})
	if err != nil {
		t.Fatalf("the enclave's document does not verify against the node's root and the PCRs the cluster reports: %v", err)
	}
	t.Logf("document of module %s verified: PCR0 %s as the Pod's log reports", d.ModuleID, m[1])
	// The same document fails against another PCR0: the check is real.
	other := map[int][]byte{0: make([]byte, 48)}
	if _, err := attestation.Verify(doc.Document, attestation.VerifyOptions{Root: root, PCRs: other, Nonce: nonce}); err == nil {
		t.Error("the document verified against an all-zero PCR0")
	}
}
