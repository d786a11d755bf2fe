package build

import (
	"errors"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/eif/ramdisk"
)

// ProcessFromSpec converts an OCI runtime spec (a container bundle's
// config.json, as containerd hands it to a shim) into the enclave process:
// args, env, cwd, numeric user and groups, hostname.
func ProcessFromSpec(s *specs.Spec) (ramdisk.Process, error) {
	if s == nil || s.Process == nil || len(s.Process.Args) == 0 {
		return ramdisk.Process{}, errors.New("the OCI spec has no process args")
	}
	p := s.Process
	proc := ramdisk.Process{
		Args: append([]string{}, p.Args...), Env: append([]string{}, p.Env...), Cwd: p.Cwd,
		UID: p.User.UID, GID: p.User.GID, Hostname: s.Hostname,
	}
	for _, g := range p.User.AdditionalGids {
		if g != p.User.GID {
			proc.AdditionalGIDs = append(proc.AdditionalGIDs, g)
		}
	}
	if proc.Cwd == "" {
		proc.Cwd = "/"
	}
	return proc, nil
}
