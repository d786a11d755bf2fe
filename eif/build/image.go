package build

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/ramdisk"
)

// DefaultPath is set when an image's environment has no PATH, as container
// runtimes do.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Overrides change the process an image's config describes, like the
// arguments of `docker run` or a Pod's container spec.
type Overrides struct {
	// Entrypoint replaces the image's entrypoint when non-nil (and then the
	// image's Cmd is dropped unless Cmd is set too, as Kubernetes does).
	Entrypoint []string
	// Cmd replaces the image's Cmd when non-nil.
	Cmd []string
	// Env entries (K=V) replace the image's entries of the same key or are
	// appended.
	Env []string
	// Cwd replaces the working directory when set.
	Cwd string
	// User replaces the user when set: "user", "uid", "user:group", "uid:gid".
	User string
}

// FromImage builds an EIF from an image: its layers, flattened, become the
// customer ramdisk, its config (with ov applied) the process. The layers are
// read twice (an index pass and a data pass) and never held in memory.
func FromImage(out io.WriteSeeker, img v1.Image, ov Overrides, opts Options) (eif.Measurements, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return eif.Measurements{}, fmt.Errorf("building eif: reading image config: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return eif.Measurements{}, fmt.Errorf("building eif: reading image layers: %w", err)
	}
	var openers []ramdisk.Opener
	for _, l := range layers {
		openers = append(openers, l.Uncompressed)
	}
	fs, err := ramdisk.ScanLayers(openers)
	if err != nil {
		return eif.Measurements{}, fmt.Errorf("building eif: %w", err)
	}
	proc, err := ProcessFromConfig(cfg, ov, fs.File("/etc/passwd"), fs.File("/etc/group"))
	if err != nil {
		return eif.Measurements{}, fmt.Errorf("building eif: %w", err)
	}
	info, err := dockerInfo(img, cfg)
	if err != nil {
		return eif.Measurements{}, fmt.Errorf("building eif: %w", err)
	}
	return write(out, opts, info, func(w io.Writer) error { return fs.Write(w, proc) })
}

// dockerInfo is the metadata's DockerInfo: the image's identity and config,
// in the spirit of `docker image inspect`.
func dockerInfo(img v1.Image, cfg *v1.ConfigFile) (json.RawMessage, error) {
	id, err := img.ConfigName()
	if err != nil {
		return nil, fmt.Errorf("reading image config digest: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("reading image digest: %w", err)
	}
	return json.Marshal(map[string]any{
		"Id":           id.String(),
		"RepoDigests":  []string{digest.String()},
		"Architecture": cfg.Architecture,
		"Os":           cfg.OS,
		"Created":      cfg.Created,
		"Config":       cfg.Config,
	})
}

// ProcessFromConfig derives the process from an image config and overrides:
// argv is Entrypoint+Cmd, the environment gets a PATH when it has none, the
// working directory defaults to "/", the user is resolved to numeric ids with
// the image's /etc/passwd and /etc/group (passwd and group, which may be
// nil), and EXPOSEd TCP ports are listed.
func ProcessFromConfig(cfg *v1.ConfigFile, ov Overrides, passwd, group []byte) (ramdisk.Process, error) {
	c := cfg.Config
	entry, cmd := c.Entrypoint, c.Cmd
	if ov.Entrypoint != nil {
		entry, cmd = ov.Entrypoint, nil
	}
	if ov.Cmd != nil {
		cmd = ov.Cmd
	}
	var p ramdisk.Process
	p.Args = append(append([]string{}, entry...), cmd...)
	if len(p.Args) == 0 {
		return p, fmt.Errorf("the image has no entrypoint or command; give one")
	}
	p.Env = mergeEnv(c.Env, ov.Env)
	p.Cwd = c.WorkingDir
	if ov.Cwd != "" {
		p.Cwd = ov.Cwd
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	user := c.User
	if ov.User != "" {
		user = ov.User
	}
	var err error
	if p.UID, p.GID, p.AdditionalGIDs, err = ResolveUser(user, passwd, group); err != nil {
		return p, err
	}
	for port := range c.ExposedPorts {
		num, proto, _ := strings.Cut(port, "/")
		if proto != "" && proto != "tcp" {
			continue
		}
		n, err := strconv.ParseUint(num, 10, 16)
		if err != nil {
			return p, fmt.Errorf("image exposes port %q, not a port number", port)
		}
		p.Ports = append(p.Ports, uint16(n))
	}
	sort.Slice(p.Ports, func(i, j int) bool { return p.Ports[i] < p.Ports[j] })
	return p, nil
}

func mergeEnv(base, over []string) []string {
	out := append([]string{}, base...)
	idx := map[string]int{}
	for i, e := range out {
		k, _, _ := strings.Cut(e, "=")
		idx[k] = i
	}
	for _, e := range over {
		k, _, _ := strings.Cut(e, "=")
		if i, ok := idx[k]; ok {
			out[i] = e
		} else {
			idx[k] = len(out)
			out = append(out, e)
		}
	}
	if _, ok := idx["PATH"]; !ok {
		out = append(out, DefaultPath)
	}
	return out
}

// ResolveUser turns an OCI config user ("", "name", "uid", "name:group",
// "uid:gid", …) into numeric ids using passwd and group files (either may be
// nil). A name that the files do not define is an error; a numeric uid need
// not exist. Without a group, the user's primary group from passwd is used
// (0 when unknown); supplementary groups are those of group that list the
// user by name.
func ResolveUser(user string, passwd, group []byte) (uid, gid uint32, additional []uint32, err error) {
	if user == "" {
		user = "0"
	}
	u, g, hasGroup := strings.Cut(user, ":")
	type pwEntry struct {
		name     string
		uid, gid uint32
	}
	var pw *pwEntry
	for _, line := range strings.Split(string(passwd), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 4 {
			continue
		}
		id, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		if f[0] == u || f[2] == u {
			pw = &pwEntry{f[0], uint32(id), uint32(gid)}
			break
		}
	}
	if n, err := strconv.ParseUint(u, 10, 32); err == nil {
		uid = uint32(n)
	} else if pw != nil {
		uid = pw.uid
	} else {
		return 0, 0, nil, fmt.Errorf("user %q is not in the image's /etc/passwd; use a numeric uid or add the user to the image", u)
	}
	if pw != nil {
		gid = pw.gid
	}
	type grEntry struct {
		name    string
		gid     uint32
		members []string
	}
	var groups []grEntry
	for _, line := range strings.Split(string(group), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 4 {
			continue
		}
		id, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		groups = append(groups, grEntry{f[0], uint32(id), strings.Split(f[3], ",")})
	}
	if hasGroup {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			gid = uint32(n)
		} else {
			found := false
			for _, e := range groups {
				if e.name == g {
					gid, found = e.gid, true
					break
				}
			}
			if !found {
				return 0, 0, nil, fmt.Errorf("group %q is not in the image's /etc/group; use a numeric gid or add the group to the image", g)
			}
		}
	}
	if pw != nil {
		for _, e := range groups {
			for _, m := range e.members {
				if m == pw.name && e.gid != gid {
					additional = append(additional, e.gid)
				}
			}
		}
	}
	return uid, gid, additional, nil
}
