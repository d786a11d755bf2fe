package initproc

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/nitropod/nitropod/attestation"
	"github.com/nitropod/nitropod/enclave/nsm"
)

// AttestationPath is the attestation HTTP API's endpoint (docs/ATTESTATION.md).
const AttestationPath = "/v1/attestation"

// attestationRequest is the API's JSON body; every field is optional and
// base64 (standard, padded) in JSON.
type attestationRequest struct {
	Nonce     []byte `json:"nonce"`
	UserData  []byte `json:"user_data"`
	PublicKey []byte `json:"public_key"`
}

// attestationResponse is the API's JSON answer: the COSE_Sign1 document.
type attestationResponse struct {
	Document []byte `json:"document"`
}

type apiError struct {
	Error string `json:"error"`
	// Code is the NSM error code when the NSM refused the request.
	Code string `json:"code,omitempty"`
}

// attestationHandler serves POST AttestationPath: it asks the NSM (call
// sends one CBOR request) for a document with the body's nonce, user_data
// and public_key and returns it as JSON ({"document": base64}), or as raw
// CBOR when the client accepts application/cbor.
func attestationHandler(call func(req []byte) ([]byte, error)) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(AttestationPath, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeJSON(w, http.StatusMethodNotAllowed, apiError{Error: "use POST with a JSON body {nonce, user_data, public_key} (base64)"})
			return
		}
		var req attestationRequest
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<10))
		if err == nil && len(body) > 0 {
			err = json.Unmarshal(body, &req)
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("request body is not JSON with base64 nonce, user_data and public_key: %v", err)})
			return
		}
		for _, f := range []struct {
			name string
			b    []byte
			max  int
		}{{"nonce", req.Nonce, attestation.MaxNonce}, {"user_data", req.UserData, attestation.MaxUserData}, {"public_key", req.PublicKey, attestation.MaxPublicKey}} {
			if len(f.b) > f.max {
				writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("%s is %d bytes, the NSM takes at most %d", f.name, len(f.b), f.max), Code: string(nsm.InputTooLarge)})
				return
			}
		}
		cb, err := nsm.EncodeRequest(nsm.Request{Kind: nsm.KindAttestation, Nonce: req.Nonce, UserData: req.UserData, PublicKey: req.PublicKey})
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, apiError{Error: err.Error()})
			return
		}
		out, err := call(cb)
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, apiError{Error: fmt.Sprintf("asking the NSM: %v", err)})
			return
		}
		resp, err := nsm.DecodeResponse(out)
		if err != nil {
			writeJSON(w, http.StatusBadGateway, apiError{Error: err.Error()})
			return
		}
		if resp.Kind == "Error" {
			st := http.StatusInternalServerError
			if resp.Error == nsm.InputTooLarge || resp.Error == nsm.InvalidArgument {
				st = http.StatusBadRequest
			}
			writeJSON(w, st, apiError{Error: "the NSM refused the request", Code: string(resp.Error)})
			return
		}
		if resp.Kind != nsm.KindAttestation {
			writeJSON(w, http.StatusBadGateway, apiError{Error: fmt.Sprintf("the NSM answered %s to an attestation request", resp.Kind)})
			return
		}
		if strings.Contains(r.Header.Get("Accept"), "application/cbor") {
			w.Header().Set("Content-Type", "application/cbor")
			_, _ = w.Write(resp.Document)
			return
		}
		writeJSON(w, http.StatusOK, attestationResponse{Document: resp.Document})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// attestationPort resolves Process.AttestationPort (0: the default, -1:
// off); an out-of-range value is an error naming the fix.
func attestationPort(p int, def int) (int, error) {
	switch {
	case p == 0:
		return def, nil
	case p == -1:
		return 0, nil
	case p < 1 || p > 65535:
		return 0, fmt.Errorf("attestation port %d is not a TCP port: use 1…65535, 0 for the default %d, or -1 to turn the API off", p, def)
	}
	return p, nil
}
