package s3

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// IRSA environment variables (EKS "IAM roles for service accounts").
const (
	EnvRoleARN              = "AWS_ROLE_ARN"
	EnvWebIdentityTokenFile = "AWS_WEB_IDENTITY_TOKEN_FILE"
	EnvRoleSessionName      = "AWS_ROLE_SESSION_NAME"
)

// PodWebIdentity returns the per-Pod credentials of a container: when its
// env carries AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE (set by EKS for a
// service account with a role), the role and the token file's path on the
// node, resolved through the spec's mounts (the projected token volume). It
// returns nil when the container has no such env.
func PodWebIdentity(spec *specs.Spec) (*WebIdentity, error) {
	if spec == nil || spec.Process == nil {
		return nil, nil
	}
	env := map[string]string{}
	for _, kv := range spec.Process.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	role, token := env[EnvRoleARN], env[EnvWebIdentityTokenFile]
	switch {
	case role == "" && token == "":
		return nil, nil
	case role == "" || token == "":
		return nil, fmt.Errorf("the container sets only one of %s and %s: set both (a service account with an IAM role) or neither", EnvRoleARN, EnvWebIdentityTokenFile)
	}
	root, rel, ok := hostPath(spec.Mounts, token)
	if !ok {
		return nil, fmt.Errorf("%s=%s is not on a volume of the container: mount the projected service-account token there", EnvWebIdentityTokenFile, token)
	}
	return &WebIdentity{RoleARN: role, TokenFile: filepath.Join(root, rel), TokenRoot: root, SessionName: env[EnvRoleSessionName]}, nil
}

// hostPath maps a path inside the container to the node through the bind
// mount with the longest matching destination: the mount's source (root)
// and the path beneath it (rel). A file mounted on its own (rel empty) is
// split into its directory and name, so that the file is still opened
// beneath a directory.
func hostPath(mounts []specs.Mount, p string) (root, rel string, ok bool) {
	p = path.Clean(p)
	bestLen := -1
	for _, m := range mounts {
		if m.Type != "bind" && !hasBind(m.Options) {
			continue
		}
		d := path.Clean(m.Destination)
		r, found := strings.CutPrefix(p, d)
		if !found || (r != "" && !strings.HasPrefix(r, "/") && d != "/") {
			continue
		}
		if len(d) > bestLen {
			root, rel, bestLen = filepath.Clean(m.Source), strings.TrimPrefix(r, "/"), len(d)
		}
	}
	if bestLen < 0 {
		return "", "", false
	}
	if rel == "" {
		root, rel = filepath.Split(root)
	}
	return root, rel, true
}

func hasBind(opts []string) bool {
	for _, o := range opts {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

// AnyBucket in an allowlist allows every bucket.
const AnyBucket = "*"

// CheckNodeIdentity decides whether loc may be downloaded for a Pod. A Pod
// with its own web identity (wi, from PodWebIdentity) downloads with it and
// S3 decides. A Pod without one would download with the node's credentials,
// which can read more than any one Pod should boot: that is allowed only for
// a bucket in nodeBuckets (the shim's s3.node_identity_buckets; AnyBucket
// allows all). The refusal is a KindNotAllowed *Error naming both fixes.
func CheckNodeIdentity(loc Location, wi *WebIdentity, nodeBuckets []string) error {
	if wi != nil {
		return nil
	}
	for _, b := range nodeBuckets {
		if b == AnyBucket || b == loc.Bucket {
			return nil
		}
	}
	return &Error{Kind: KindNotAllowed, Location: loc.String(), Msg: fmt.Sprintf(
		"%s: the Pod has no AWS identity of its own (%s and %s from a service account with an IAM role), and bucket %q is not in s3.node_identity_buckets of the shim config, so the node's credentials may not be used for it: give the Pod's service account an IAM role that can read the object, or add the bucket to s3.node_identity_buckets",
		loc, EnvRoleARN, EnvWebIdentityTokenFile, loc.Bucket)}
}
