// Package e2e holds nitropod's end-to-end tests: the Anjuna document's Pods
// applied with kubectl to a real one-node cluster (package test/cluster)
// whose node runs enclave Pods through containerd-shim-nitro-v1 in emulated
// enclaves. That shim enforces licences: it trusts an issuer key made for
// the run, the Pods' anjuna-license Secrets hold licences issued with it,
// and tampered or expired licences must fail visibly. Run them with
// `make e2e` (hack/e2e.sh).
package e2e
