package license

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod"
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
}

// HostPath returns the host-side path of the licence file of a container:
// the source of the spec mount at nitropod.LicenseDir (plus the file name) or
// at nitropod.LicensePath. ok is false when the spec has no such mount.
func HostPath(spec *specs.Spec) (p string, ok bool) {
	if spec == nil {
		return "", false
	}
	// The last mount for a destination wins, as in the runtime.
	for i := len(spec.Mounts) - 1; i >= 0; i-- {
		m := spec.Mounts[i]
		switch path.Clean(m.Destination) {
		case nitropod.LicensePath:
			return m.Source, true
		case nitropod.LicenseDir:
			return filepath.Join(m.Source, nitropod.LicenseSecretKey), true
		}
	}
	return "", false
}

// ContextFromSpec fills Context.Namespace from the CRI annotations of spec.
func ContextFromSpec(spec *specs.Spec) Context {
	var c Context
	if spec != nil {
		c.Namespace = spec.Annotations[nitropod.CRISandboxNamespace]
	}
	return c
}

// ReadFile reads a licence file of at most MaxFileSize bytes. A missing file
// is an *Error with ReasonMissing.
func ReadFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, missing(fmt.Sprintf("the licence file %s does not exist", p))
	}
	if err != nil {
		return nil, fmt.Errorf("reading licence: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading licence %s: %w", p, err)
	}
	return data, nil
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
	hp, ok := HostPath(spec)
	if !ok {
		return nil, missing(fmt.Sprintf("the container has no volume mounted at %s (the %s Secret)", nitropod.LicenseDir, nitropod.LicenseSecretName))
	}
	data, err := ReadFile(hp)
	if err != nil {
		return nil, err
	}
	return Verify(data, p.Keys, now, c)
}
