package ramdisk

// The layout that nitropod's builder writes and nitropod-init reads. It follows
// AWS's (docs/EIF-FORMAT.md "Ramdisks"): the bootstrap ramdisk (ramdisk 0, measured
// in PCR0 and PCR1) holds the init and the blob set's kernel modules, the
// customer ramdisk (ramdisk 1.., measured in PCR0 and PCR2) holds the image's
// filesystem under /rootfs and the process to run. AWS's /cmd and /env are
// written too, for parity with AWS's init.
const (
	// InitPath is the init binary in the bootstrap ramdisk.
	InitPath = "init"
	// ModulesDir holds the kernel modules in the bootstrap ramdisk, named
	// NN-<module>.ko and loaded by init in lexical order.
	ModulesDir = "nitropod/modules"
	// RootfsDir holds the container image's filesystem in the customer ramdisk.
	RootfsDir = "rootfs"
	// ProcessPath is the JSON encoding of Process in the customer ramdisk.
	ProcessPath = "nitropod/process.json"
	// CmdPath is argv, one per line, as AWS's init reads it.
	CmdPath = "cmd"
	// EnvPath is the environment, K=V one per line, as AWS's init reads it.
	EnvPath = "env"
)

// Process is what runs inside the enclave. It is measured (it lives in the
// customer ramdisk), so nothing that arrives at run time can change it.
type Process struct {
	// Args is argv; Args[0] is resolved against PATH from Env like execvp.
	Args []string `json:"args"`
	// Env is the environment as K=V.
	Env []string `json:"env,omitempty"`
	// Cwd is the working directory inside the rootfs; "" means "/".
	Cwd string `json:"cwd,omitempty"`
	// UID and GID are the numeric user and group the process runs as.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// AdditionalGIDs are supplementary groups.
	AdditionalGIDs []uint32 `json:"additionalGids,omitempty"`
	// Hostname is set inside the enclave; "" leaves the kernel's default.
	Hostname string `json:"hostname,omitempty"`
	// Ports are TCP ports the image declares (EXPOSE); informational.
	Ports []uint16 `json:"ports,omitempty"`
}
