package ramdisk

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/contract"
)

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
	// The shim leaves it empty (the Pod's hostname is delivered at start,
	// see Delivery) so that the replicas of a Pod template measure alike.
	Hostname string `json:"hostname,omitempty"`
	// Delivery is what the host may deliver at start (env names and mount
	// paths); init refuses anything else. nil is contract.DefaultPolicy.
	Delivery *contract.DeliveryPolicy `json:"delivery,omitempty"`
	// Ports are TCP ports the image declares (EXPOSE); informational.
	Ports []uint16 `json:"ports,omitempty"`
	// Security is the security context init applies before exec; nil
	// (no context) runs the app as root with all capabilities, as before.
	Security *Security `json:"security,omitempty"`
	// AttestationPort is the enclave-loopback TCP port of init's
	// attestation HTTP API (docs/ATTESTATION.md): 0 is the default,
	// DefaultAttestationPort; -1 turns the API off.
	AttestationPort int `json:"attestationPort,omitempty"`
	// Exec says which commands init executes on request of the host
	// (kubectl exec, exec probes and hooks): any in a debug enclave, else
	// only the listed argv vectors, matched exactly. nil refuses every
	// exec; being measured, the list is part of the enclave's PCRs.
	Exec *contract.ExecPolicy `json:"exec,omitempty"`
	// EgressAllow, when not nil, is the enclave's egress allowlist
	// (contract.ParseEgressAllow syntax, one rule per entry), enforced by
	// init: a packet to anywhere else never leaves the enclave (a pointer, so
	// that an empty list, which allows nothing, is kept apart from none). Measured,
	// so the host cannot widen it. nil allows everything.
	EgressAllow *[]string `json:"egressAllow,omitempty"`
}

// DefaultAttestationPort is where init serves the attestation HTTP API on
// the enclave's 127.0.0.1 unless Process.AttestationPort says otherwise.
const DefaultAttestationPort = contract.DefaultAttestationPort

// Security is the container's security context as the OCI spec gives it,
// applied by init inside the enclave just before it executes the app.
// Every field is omitted from the JSON when unset, so a Process without a
// security context encodes (and measures) exactly as before it existed.
// containerd and kubelet fill capabilities, masked and readonly paths into
// every spec they write, so Pods created through them carry one.
type Security struct {
	// Capabilities are the app's capability sets; nil keeps init's (all).
	Capabilities *Capabilities `json:"capabilities,omitempty"`
	// NoNewPrivileges sets no_new_privs (allowPrivilegeEscalation: false).
	NoNewPrivileges bool `json:"noNewPrivileges,omitempty"`
	// ReadonlyRootfs remounts the image's filesystem read-only.
	ReadonlyRootfs bool `json:"readonlyRootfs,omitempty"`
	// MaskedPaths are hidden from the app: an empty read-only tmpfs over a
	// directory, /dev/null over a file.
	MaskedPaths []string `json:"maskedPaths,omitempty"`
	// ReadonlyPaths are remounted read-only.
	ReadonlyPaths []string `json:"readonlyPaths,omitempty"`
	// Sysctls are written to /proc/sys (keys in dotted form).
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Seccomp is the OCI seccomp profile; init compiles it to a BPF filter
	// and installs it last, right before exec.
	Seccomp *specs.LinuxSeccomp `json:"seccomp,omitempty"`
}

// Capabilities are capability names (CAP_*) per set, as in the OCI spec.
type Capabilities struct {
	Bounding    []string `json:"bounding,omitempty"`
	Effective   []string `json:"effective,omitempty"`
	Permitted   []string `json:"permitted,omitempty"`
	Inheritable []string `json:"inheritable,omitempty"`
	Ambient     []string `json:"ambient,omitempty"`
}
