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
	host, ok := hostPath(spec.Mounts, token)
	if !ok {
		return nil, fmt.Errorf("%s=%s is not on a volume of the container: mount the projected service-account token there", EnvWebIdentityTokenFile, token)
	}
	return &WebIdentity{RoleARN: role, TokenFile: host, SessionName: env[EnvRoleSessionName]}, nil
}

// hostPath maps a path inside the container to the node through the bind
// mount with the longest matching destination.
func hostPath(mounts []specs.Mount, p string) (string, bool) {
	p = path.Clean(p)
	best, bestLen := "", -1
	for _, m := range mounts {
		if m.Type != "bind" && !hasBind(m.Options) {
			continue
		}
		d := path.Clean(m.Destination)
		rel, ok := strings.CutPrefix(p, d)
		if !ok || (rel != "" && !strings.HasPrefix(rel, "/") && d != "/") {
			continue
		}
		if len(d) > bestLen {
			best, bestLen = filepath.Join(m.Source, rel), len(d)
		}
	}
	return best, bestLen >= 0
}

func hasBind(opts []string) bool {
	for _, o := range opts {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}
