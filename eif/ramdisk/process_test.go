package ramdisk

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestProcessJSONWithoutSecurity pins the encoding of a Process without a
// security context: it is measured into PCR2, so adding the Security field
// must not change what existing EIFs measure.
func TestProcessJSONWithoutSecurity(t *testing.T) {
	p := Process{Args: []string{"/bin/app", "-x"}, Env: []string{"PATH=/bin"}, Cwd: "/opt", UID: 33, GID: 44, AdditionalGIDs: []uint32{5}, Hostname: "h", Ports: []uint16{80}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"args":["/bin/app","-x"],"env":["PATH=/bin"],"cwd":"/opt","uid":33,"gid":44,"additionalGids":[5],"hostname":"h","ports":[80]}`
	if string(b) != want {
		t.Errorf("Process JSON changed:\n got %s\nwant %s", b, want)
	}
}

// TestProcessSecurityJSON checks that a security context round-trips and
// changes the encoding (and so PCR2).
func TestProcessSecurityJSON(t *testing.T) {
	base := Process{Args: []string{"sh"}}
	p := base
	p.Security = &Security{
		Capabilities:    &Capabilities{Bounding: []string{"CAP_CHOWN"}, Effective: []string{"CAP_CHOWN"}},
		NoNewPrivileges: true,
		ReadonlyRootfs:  true,
		MaskedPaths:     []string{"/proc/kcore"},
		ReadonlyPaths:   []string{"/proc/sys"},
		Sysctls:         map[string]string{"net.ipv4.ip_forward": "0", "kernel.shm_rmid_forced": "1"},
		Seccomp:         &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Syscalls: []specs.LinuxSyscall{{Names: []string{"read"}, Action: specs.ActAllow}}},
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	b0, _ := json.Marshal(base)
	if bytes.Equal(b, b0) {
		t.Fatal("a security context does not change the encoding")
	}
	var back Process
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, p) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back.Security, p.Security)
	}
	// Map keys are encoded sorted: the encoding does not depend on the
	// order sysctls were given in.
	b2, _ := json.Marshal(p)
	if !bytes.Equal(b, b2) {
		t.Error("encoding is not deterministic")
	}
}
