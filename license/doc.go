// Package license reads, issues and verifies nitropod licence files.
//
// A licence is a small YAML document, delivered to a Pod as the
// `anjuna-license` Secret (key `license.yaml`) and mounted by the webhook at
// nitropod.LicensePath. The shim reads it from the host side of that mount
// (beneath the volume's own directory, never following a link out of it,
// regular files of at most MaxFileSize bytes only: ReadFileBeneath)
// before it builds or boots an enclave and refuses to run the container when
// the licence is missing, expired, not yet valid, not signed by a trusted key
// or does not allow the Pod (Policy.Check). The licence never enters the
// enclave image or the EIF cache key.
//
// # File format
//
//	apiVersion: nitropod.io/v1
//	kind: License
//	licensee: Example Corp
//	issued: "2026-01-01T00:00:00Z"
//	expires: "2027-01-31T00:00:00Z"
//	limits:                      # optional; 0 or absent means unlimited
//	  maxEnclavesPerPod: 2
//	  maxEnclavesPerNode: 4
//	  namespaces: [default, prod] # empty: every namespace
//	  cluster: 6f1c…              # optional: only on nodes with this license.cluster_id
//	keyID: 3f2a1b0c9d8e7f60       # which key signed it (a hint, not trusted)
//	signature: BASE64             # Ed25519 over the canonical encoding
//
// Dates are RFC 3339; a bare date (2027-01-31) means midnight UTC. A licence
// is valid from issued (inclusive) to expires (exclusive).
//
// # Canonical encoding (what is signed)
//
// The signature is Ed25519 (RFC 8032) over the bytes
//
//	"nitropod-license-v1\n" + JSON
//
// where JSON is the compact encoding (Go encoding/json, no spaces, no
// trailing newline) of an object with exactly these keys in this order:
//
//	{"licensee":STRING,"issued":RFC3339-UTC,"expires":RFC3339-UTC,
//	 "maxEnclavesPerPod":INT,"maxEnclavesPerNode":INT,"namespaces":[STRING...]
//	 [,"cluster":STRING]}
//
// The "cluster" key is present only when the licence is bound to a cluster,
// so licences without one have the same canonical bytes as before the field
// existed. A node whose shim config sets license.cluster_id accepts a bound
// licence only for that cluster (any stable ID works: the UID of the
// kube-system namespace is a good one); an unbound licence is valid on every
// cluster. An older shim refuses a bound licence as malformed (unknown
// field) rather than ignoring the binding.
//
// Times are formatted in UTC with whole seconds ("2006-01-02T15:04:05Z");
// namespaces are sorted and duplicates removed; an absent limit is 0 and an
// absent namespace list is []. Because the encoding is recomputed from the
// parsed fields, comments, key order and YAML formatting of the file do not
// matter, while any change to a signed value invalidates the signature.
//
// Keys are PEM files: the private key as PKCS #8 ("PRIVATE KEY"), public keys
// as PKIX ("PUBLIC KEY"); a public-key file may hold several keys. The keyID
// is the first 8 bytes of SHA-256 over the raw 32-byte public key, in hex.
package license
