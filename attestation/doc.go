// Package attestation reads, signs and verifies Nitro Enclaves attestation
// documents: the COSE_Sign1 messages (ES384) that the Nitro Secure Module
// (NSM) returns to an enclave for a GetAttestationDoc (Attestation) request,
// and that relying parties (AWS KMS, an app's clients) check before they
// trust the enclave. docs/ATTESTATION.md describes the whole flow.
//
// # The document
//
// The COSE payload is a CBOR map in the NSM API's field order: module_id,
// digest ("SHA384"), timestamp (Unix milliseconds), pcrs (index → 48-byte
// value, indices 0–15), certificate (the DER signing certificate), cabundle
// (DER certificates from the root to the certificate's issuer), and the
// optional public_key, user_data and nonce (null when absent). Document is
// that payload; Parse decodes a document without trusting it.
//
// # Verifying
//
// Verify checks, in this order, and names the check that failed in a
// *VerifyError: the COSE structure and payload limits, the ES384 signature
// with the certificate's key, the chain from the certificate through the
// cabundle to the root the caller trusts (AWS's Nitro Enclaves root G1 by
// default, embedded here and pinned by its SHA-256 fingerprint), each
// certificate's validity period, and the PCRs and nonce the caller expects.
// The cabundle's own root is never trusted: only the caller's root is.
//
// # Emulation
//
// In emulation (the QEMU backend) there is no NSM: nitropod emulates it on
// the host (enclave/nsm) and signs documents with a per-node emulation CA
// (EmulationCA) whose private key stays on the node (mode 0600) and is never
// reachable from inside the enclave. Its subject says "NOT AWS", so a
// document it signed cannot be mistaken for a Nitro one: it does not chain to
// AWS's root, and Verify refuses it unless the relying party passes the
// emulation root explicitly. An emulated document is only as trustworthy as
// the node that signed it; it exists so that attestation flows can be
// developed and tested without Nitro hardware.
package attestation
