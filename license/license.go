package license

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nitropod/nitropod"
)

// APIVersion and Kind identify a licence document.
const (
	APIVersion = "nitropod.io/v1"
	Kind       = "License"
)

// canonicalPrefix starts the signed bytes; it binds the signature to this
// format version (see the package documentation).
const canonicalPrefix = "nitropod-license-v1\n"

// MaxFileSize bounds how much of a licence file is read; real ones are < 1 KiB.
const MaxFileSize = 64 << 10

// Limits restricts where and how much a licence may be used. Zero values mean
// unlimited.
type Limits struct {
	// MaxEnclavesPerPod caps the enclaves one Pod runs at once.
	MaxEnclavesPerPod int `json:"maxEnclavesPerPod,omitempty"`
	// MaxEnclavesPerNode caps the enclaves one node runs at once.
	MaxEnclavesPerNode int `json:"maxEnclavesPerNode,omitempty"`
	// Namespaces, when not empty, are the only namespaces allowed.
	Namespaces []string `json:"namespaces,omitempty"`
	// Cluster, when set, binds the licence to one cluster: it is valid only
	// on nodes whose shim config names the same cluster (license.cluster_id,
	// e.g. the UID of the cluster's kube-system namespace).
	Cluster string `json:"cluster,omitempty"`
}

// License is a parsed licence. Only Licensee, Issued, Expires and Limits are
// signed; KeyID and Signature carry the signature.
type License struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Licensee   string    `json:"licensee"`
	Issued     Timestamp `json:"issued"`
	Expires    Timestamp `json:"expires"`
	Limits     *Limits   `json:"limits,omitempty"`
	KeyID      string    `json:"keyID,omitempty"`
	Signature  string    `json:"signature"`
}

// Timestamp is a time in a licence: RFC 3339, or a bare date meaning midnight UTC.
type Timestamp struct{ time.Time }

// MarshalJSON writes the time as RFC 3339 in UTC, whole seconds.
func (t Timestamp) MarshalJSON() ([]byte, error) {
	return json.Marshal(formatTime(t.Time))
}

// UnmarshalJSON accepts "2006-01-02T15:04:05Z07:00" or "2006-01-02".
func (t *Timestamp) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a date must be a string like 2027-01-31 or 2027-01-31T00:00:00Z, got %s", b)
	}
	v, err := ParseTime(s)
	if err != nil {
		return err
	}
	t.Time = v
	return nil
}

// ParseTime parses a licence date: RFC 3339 or a bare date (midnight UTC).
func ParseTime(s string) (time.Time, error) {
	if v, err := time.Parse(time.RFC3339, s); err == nil {
		return v.UTC().Truncate(time.Second), nil
	}
	if v, err := time.Parse(time.DateOnly, s); err == nil {
		return v, nil
	}
	return time.Time{}, fmt.Errorf("bad date %q: use 2027-01-31 or 2027-01-31T00:00:00Z", s)
}

func formatTime(t time.Time) string {
	return t.UTC().Truncate(time.Second).Format(time.RFC3339)
}

// humanDate prints a date for messages: the day alone at midnight UTC.
func humanDate(t time.Time) string {
	t = t.UTC()
	if t.Equal(t.Truncate(24 * time.Hour)) {
		return t.Format(time.DateOnly)
	}
	return t.Format(time.RFC3339)
}

// Reason classifies why a licence was refused.
type Reason string

// Reasons a licence is refused.
const (
	ReasonMissing      Reason = "Missing"
	ReasonMalformed    Reason = "Malformed"
	ReasonUntrusted    Reason = "Untrusted"
	ReasonExpired      Reason = "Expired"
	ReasonNotYetValid  Reason = "NotYetValid"
	ReasonNamespace    Reason = "NamespaceNotAllowed"
	ReasonCluster      Reason = "ClusterNotAllowed"
	ReasonLimit        Reason = "LimitExceeded"
	ReasonNoTrustedKey Reason = "NoTrustedKey"
)

// Error is a refused licence. Msg is written for the person who deploys the
// Pod (it ends up in `kubectl describe pod`).
type Error struct {
	Reason Reason
	Msg    string
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of a licence error, or "" for other errors.
func ReasonOf(err error) Reason {
	var le *Error
	if errors.As(err, &le) {
		return le.Reason
	}
	return ""
}

func refuse(r Reason, err error, format string, args ...any) *Error {
	return &Error{Reason: r, Msg: fmt.Sprintf(format, args...), Err: err}
}

// Context is what a licence is checked against. Zero counts are not checked.
type Context struct {
	// Namespace of the Pod.
	Namespace string
	// EnclavesInPod is the number of enclaves the Pod will run, this one included.
	EnclavesInPod int
	// EnclavesOnNode is the number of enclaves the node will run, this one included.
	EnclavesOnNode int
	// Cluster identifies the node's cluster (Policy.Cluster); "" when the
	// node names none.
	Cluster string
}

// Parse decodes a licence file without verifying it.
func Parse(data []byte) (*License, error) {
	if len(data) > MaxFileSize {
		return nil, refuse(ReasonMalformed, nil, "licence file is %d bytes, larger than %d: is it really a nitropod licence?", len(data), MaxFileSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, refuse(ReasonMalformed, nil, "licence file is empty")
	}
	var l License
	if err := yaml.UnmarshalStrict(data, &l); err != nil {
		return nil, refuse(ReasonMalformed, err, "licence file is not valid licence YAML")
	}
	if l.APIVersion != APIVersion || l.Kind != Kind {
		return nil, refuse(ReasonMalformed, nil, "licence file has apiVersion %q kind %q, want %q %q", l.APIVersion, l.Kind, APIVersion, Kind)
	}
	switch {
	case strings.TrimSpace(l.Licensee) == "":
		return nil, refuse(ReasonMalformed, nil, "licence has no licensee")
	case l.Issued.IsZero():
		return nil, refuse(ReasonMalformed, nil, "licence has no issued date")
	case l.Expires.IsZero():
		return nil, refuse(ReasonMalformed, nil, "licence has no expires date")
	case !l.Expires.After(l.Issued.Time):
		return nil, refuse(ReasonMalformed, nil, "licence expires (%s) before it is issued (%s)", humanDate(l.Expires.Time), humanDate(l.Issued.Time))
	case l.Signature == "":
		return nil, refuse(ReasonMalformed, nil, "licence is not signed (no signature field)")
	}
	if lim := l.Limits; lim != nil && (lim.MaxEnclavesPerPod < 0 || lim.MaxEnclavesPerNode < 0) {
		return nil, refuse(ReasonMalformed, nil, "licence limits must not be negative")
	}
	return &l, nil
}

// Canonical returns the bytes the signature covers (see the package documentation).
func (l *License) Canonical() []byte {
	c := struct {
		Licensee           string   `json:"licensee"`
		Issued             string   `json:"issued"`
		Expires            string   `json:"expires"`
		MaxEnclavesPerPod  int      `json:"maxEnclavesPerPod"`
		MaxEnclavesPerNode int      `json:"maxEnclavesPerNode"`
		Namespaces         []string `json:"namespaces"`
		// Last and only when set, so that licences without a cluster keep
		// their canonical bytes (and signatures) of before.
		Cluster string `json:"cluster,omitempty"`
	}{
		Licensee:   l.Licensee,
		Issued:     formatTime(l.Issued.Time),
		Expires:    formatTime(l.Expires.Time),
		Namespaces: []string{},
	}
	if lim := l.Limits; lim != nil {
		c.MaxEnclavesPerPod = lim.MaxEnclavesPerPod
		c.MaxEnclavesPerNode = lim.MaxEnclavesPerNode
		c.Namespaces = normalizeNamespaces(lim.Namespaces)
		c.Cluster = lim.Cluster
	}
	b, err := json.Marshal(c)
	if err != nil {
		// Strings and ints always encode.
		panic(fmt.Sprintf("license: encoding canonical form: %v", err))
	}
	return append([]byte(canonicalPrefix), b...)
}

func normalizeNamespaces(ns []string) []string {
	out := slices.Clone(ns)
	if out == nil {
		out = []string{}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// KeyID names a public key: hex of the first 8 bytes of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Verify parses a licence and checks, in order: its signature against keys,
// its validity at now, and its limits against c. The returned error is an
// *Error whose message says what is wrong and how to fix it.
func Verify(data []byte, keys []ed25519.PublicKey, now time.Time, c Context) (*License, error) {
	l, err := Parse(data)
	if err != nil {
		return nil, err
	}
	if err := l.CheckSignature(keys); err != nil {
		return nil, err
	}
	if err := l.CheckTime(now); err != nil {
		return nil, err
	}
	if err := l.CheckLimits(c); err != nil {
		return nil, err
	}
	return l, nil
}

// CheckSignature verifies the signature against any of keys.
func (l *License) CheckSignature(keys []ed25519.PublicKey) error {
	if len(keys) == 0 {
		return refuse(ReasonNoTrustedKey, nil, "no trusted licence public key is configured on this node: add the issuer's public key to the runtime configuration, or switch licence enforcement off")
	}
	sig, err := base64.StdEncoding.DecodeString(l.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return refuse(ReasonUntrusted, nil, "licence for %q is not signed by a trusted key: its signature is not a base64 Ed25519 signature", l.Licensee)
	}
	msg := l.Canonical()
	for _, k := range keys {
		if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig) {
			return nil
		}
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = KeyID(k)
	}
	return refuse(ReasonUntrusted, nil, "licence for %q is not signed by a trusted key (it names key %q; trusted keys: %s): ask your licence issuer for a licence signed by a configured key, or check that the file was not edited",
		l.Licensee, l.KeyID, strings.Join(ids, ", "))
}

// CheckTime verifies that now is within [Issued, Expires).
func (l *License) CheckTime(now time.Time) error {
	if now.Before(l.Issued.Time) {
		return refuse(ReasonNotYetValid, nil, "licence for %q is not valid before %s (now %s): check the node clock or use a current licence", l.Licensee, humanDate(l.Issued.Time), formatTime(now))
	}
	if !now.Before(l.Expires.Time) {
		return refuse(ReasonExpired, nil, "licence for %q expired on %s: renew it and update the %s Secret", l.Licensee, humanDate(l.Expires.Time), nitropod.LicenseSecretName)
	}
	return nil
}

// CheckLimits verifies the licence's limits for c.
func (l *License) CheckLimits(c Context) error {
	lim := l.Limits
	if lim == nil {
		return nil
	}
	if lim.Cluster != "" && lim.Cluster != c.Cluster {
		if c.Cluster == "" {
			return refuse(ReasonCluster, nil, "licence for %q is bound to cluster %q, and this node names no cluster: set license.cluster_id in the shim config to this cluster's ID", l.Licensee, lim.Cluster)
		}
		return refuse(ReasonCluster, nil, "licence for %q is bound to cluster %q, this node is in cluster %q (license.cluster_id in the shim config): use a licence issued for this cluster", l.Licensee, lim.Cluster, c.Cluster)
	}
	if len(lim.Namespaces) > 0 && !slices.Contains(lim.Namespaces, c.Namespace) {
		return refuse(ReasonNamespace, nil, "licence for %q does not allow namespace %q (allowed: %s): run the Pod in an allowed namespace or get a licence that includes it",
			l.Licensee, c.Namespace, strings.Join(normalizeNamespaces(lim.Namespaces), ", "))
	}
	if lim.MaxEnclavesPerPod > 0 && c.EnclavesInPod > lim.MaxEnclavesPerPod {
		return refuse(ReasonLimit, nil, "licence for %q allows %d enclaves per Pod, this Pod needs %d", l.Licensee, lim.MaxEnclavesPerPod, c.EnclavesInPod)
	}
	if lim.MaxEnclavesPerNode > 0 && c.EnclavesOnNode > lim.MaxEnclavesPerNode {
		return refuse(ReasonLimit, nil, "licence for %q allows %d enclaves per node, this node would run %d", l.Licensee, lim.MaxEnclavesPerNode, c.EnclavesOnNode)
	}
	return nil
}

// Terms are the signed fields of a licence to issue.
type Terms struct {
	Licensee string
	Issued   time.Time
	Expires  time.Time
	Limits   Limits
}

// Issue signs terms with priv and returns the licence file.
func Issue(t Terms, priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, errors.New("issuing licence: the signing key is not an Ed25519 private key")
	}
	l := &License{
		APIVersion: APIVersion,
		Kind:       Kind,
		Licensee:   t.Licensee,
		Issued:     Timestamp{t.Issued.UTC().Truncate(time.Second)},
		Expires:    Timestamp{t.Expires.UTC().Truncate(time.Second)},
		KeyID:      KeyID(priv.Public().(ed25519.PublicKey)),
	}
	if t.Limits.MaxEnclavesPerPod != 0 || t.Limits.MaxEnclavesPerNode != 0 || len(t.Limits.Namespaces) > 0 || t.Limits.Cluster != "" {
		lim := t.Limits
		if len(lim.Namespaces) > 0 {
			lim.Namespaces = normalizeNamespaces(lim.Namespaces)
		}
		l.Limits = &lim
	}
	l.Signature = "x" // satisfies Parse's check below; replaced by the real one
	j, err := json.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("issuing licence: %w", err)
	}
	if _, err := Parse(j); err != nil {
		return nil, fmt.Errorf("issuing licence: %w", err)
	}
	l.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(priv, l.Canonical()))
	j, err = json.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("issuing licence: %w", err)
	}
	out, err := yaml.JSONToYAML(j)
	if err != nil {
		return nil, fmt.Errorf("issuing licence: %w", err)
	}
	return out, nil
}
