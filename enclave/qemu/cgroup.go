package qemu

// StartInCgroup makes the backend start QEMU directly inside the cgroup v2
// directory dir (an absolute path in the cgroup2 mount, created by the
// caller): the child is born there (clone3 with CLONE_INTO_CGROUP), so none
// of its memory is charged to the caller's cgroup. cgroup v2 cannot move a
// single thread of the caller into another cgroup, which is how it is done
// on v1. "" starts QEMU in the caller's cgroup.
func (b *Backend) StartInCgroup(dir string) { b.cgroupDir = dir }
