package shim_test

import "github.com/nitropod/nitropod/internal/shimtest"

// ctrCPUFlags are extra `ctr run` flags for this machine's cgroups. ctr
// asks for cpu shares 1024 by default, which a cgroup v2 hierarchy without
// the cpu controller cannot take (hack/systemd-sandbox.sh start --unified
// on a cgroup v1 machine, whose controllers are bound to v1; runc refuses
// it there too); the flag leaves the shares out.
func ctrCPUFlags() []string {
	if shimtest.NodeCgroupfs().HasController("cpu") {
		return nil
	}
	return []string{"--cpu-shares", "0"}
}
