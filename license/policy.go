package license

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/internal/safefile"
)

// Policy is how a node treats licences (from the shim's configuration).
type Policy struct {
	// Enforce refuses containers without a valid licence. When false, a
	// container runs with or without one.
	Enforce bool
	// Keys are the trusted issuer public keys.
	Keys []ed25519.PublicKey
	// OnIgnored, when set, is called with the refusal that Check ignored
	// because enforcement is off (for a log line).
	OnIgnored func(error)
	// Cluster identifies the cluster this node belongs to (the shim's
	// license.cluster_id); a licence bound to a cluster (limits.cluster) is
	// valid only where it matches. Check copies it into Context.Cluster.
	Cluster string
}

// HostPath returns the host-side path of the licence file of a container:
// the source of the spec mount at nitropod.LicenseDir (plus the file name) or
// at nitropod.LicensePath. ok is false when the spec has no such mount.
func HostPath(spec *specs.Spec) (p string, ok bool) {
	root, rel, ok := HostFile(spec)
	if !ok {
		return "", false
	}
	return filepath.Join(root, rel), true
}

// HostFile is HostPath split into the directory the licence is read beneath
// (the mount's source for a mounted directory, the source's parent for a
// mounted file) and the file's name below it. Everything below root is
// Pod-controlled; ReadFileBeneath reads it without leaving root.
func HostFile(spec *specs.Spec) (root, rel string, ok bool) {
	if spec == nil {
		return "", "", false
	}
	// The last mount for a destination wins, as in the runtime.
	for i := len(spec.Mounts) - 1; i >= 0; i-- {
		m := spec.Mounts[i]
		switch path.Clean(m.Destination) {
		case nitropod.LicensePath:
			root, rel = filepath.Split(filepath.Clean(m.Source))
			return root, rel, true
		case nitropod.LicenseDir:
			return filepath.Clean(m.Source), nitropod.LicenseSecretKey, true
		}
	}
	return "", "", false
}

// ContextFromSpec fills Context.Namespace from the CRI annotations of spec.
func ContextFromSpec(spec *specs.Spec) Context {
	var c Context
	if spec != nil {
		c.Namespace = spec.Annotations[nitropod.CRISandboxNamespace]
	}
	return c
}

// ReadFile reads a licence file the caller chose (the CLI's argument):
// symlinks in p are followed, then it must be a regular file of at most
// MaxFileSize bytes. A missing file is an *Error with ReasonMissing. The
// shim reads a Pod's licence with ReadFileBeneath instead.
func ReadFile(p string) ([]byte, error) {
	if real, err := filepath.EvalSymlinks(p); err == nil {
		p = real
	}
	root, rel := filepath.Split(filepath.Clean(p))
	if root == "" {
		root = "."
	}
	return ReadFileBeneath(root, rel)
}

// ReadFileBeneath reads the licence file rel beneath the directory root with
// the rules of package internal/safefile: symlinks and ".." may not leave
// root, only a regular file of at most MaxFileSize bytes is read, and the
// read is time-limited. A missing file is an *Error with ReasonMissing; any
// other refusal is an *Error with ReasonMalformed that names the file.
func ReadFileBeneath(root, rel string) ([]byte, error) {
	data, err := safefile.ReadBeneath(root, rel, MaxFileSize)
	switch {
	case err == nil:
		return data, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, missing(fmt.Sprintf("the licence file %s does not exist", filepath.Join(root, rel)))
	case errors.Is(err, safefile.ErrTooLarge):
		return nil, refuse(ReasonMalformed, err, "the licence file is larger than %d bytes: is it really a nitropod licence?", MaxFileSize)
	case errors.Is(err, safefile.ErrNotRegular), errors.Is(err, safefile.ErrEscapes):
		return nil, refuse(ReasonMalformed, err, "the licence must be a regular file inside the %s Secret volume", nitropod.LicenseSecretName)
	}
	return nil, fmt.Errorf("reading licence: %w", err)
}

func missing(detail string) *Error {
	return refuse(ReasonMissing, nil, "no licence: %s; create it with `kubectl create secret generic %s --from-file=%s=<your licence file>` and mount it into the container",
		detail, nitropod.LicenseSecretName, nitropod.LicenseSecretKey)
}

// Check decides whether the container described by spec may run. With
// enforcement on, the licence must be mounted (HostPath), readable and pass
// Verify for c at now; the error is then an *Error to show the user. With
// enforcement off, Check never fails: it returns the licence when a valid one
// is present and nil otherwise.
func (p Policy) Check(spec *specs.Spec, c Context, now time.Time) (*License, error) {
	l, err := p.check(spec, c, now)
	if err != nil && !p.Enforce {
		if p.OnIgnored != nil {
			p.OnIgnored(err)
		}
		return nil, nil
	}
	return l, err
}

func (p Policy) check(spec *specs.Spec, c Context, now time.Time) (*License, error) {
	root, rel, ok := HostFile(spec)
	if !ok {
		return nil, missing(fmt.Sprintf("the container has no volume mounted at %s (the %s Secret)", nitropod.LicenseDir, nitropod.LicenseSecretName))
	}
	data, err := ReadFileBeneath(root, rel)
	if err != nil {
		return nil, err
	}
	if p.Cluster != "" {
		c.Cluster = p.Cluster
	}
	return Verify(data, p.Keys, now, c)
}
