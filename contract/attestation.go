package contract

import (
	"fmt"
	"strconv"
	"strings"
)

// AttestationPortAnnotation sets, for every enclave container of a Pod, the
// enclave-loopback TCP port of init's attestation HTTP API
// (docs/ATTESTATION.md): a port number, or "off" for no API. Unset is the
// default port. The webhook copies the parsed value into each container's
// Enclave entry; the shim measures it into the EIF.
const AttestationPortAnnotation = "nitropod.io/attestation-port"

// DefaultAttestationPort is where the API listens unless the annotation
// says otherwise (eif/ramdisk uses the same number for Process's zero value).
const DefaultAttestationPort = 9910

// AttestationPortOff is the Enclave.AttestationPort of a Pod that turned
// the API off; 0 means the default.
const AttestationPortOff = -1

// ParseAttestationPort reads the annotation's value: "" (the default, 0),
// "off" (AttestationPortOff) or a TCP port 1…65535.
func ParseAttestationPort(v string) (int, error) {
	s := strings.TrimSpace(v)
	switch s {
	case "":
		return 0, nil
	case "off":
		return AttestationPortOff, nil
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("annotation %s is %s: give a TCP port (1-65535) for the enclave's attestation API, or \"off\" for none (unset: %d)",
			AttestationPortAnnotation, Clip(v), DefaultAttestationPort)
	}
	return p, nil
}

// CheckAttestationPort checks an Enclave entry's AttestationPort.
func CheckAttestationPort(p int) error {
	if p != 0 && p != AttestationPortOff && (p < 1 || p > 65535) {
		return fmt.Errorf("attestation port %d is not a TCP port, 0 (the default) or %d (off)", p, AttestationPortOff)
	}
	return nil
}

// EffectiveAttestationPort is the port the API listens on for an entry's
// value: 0 when it is off.
func EffectiveAttestationPort(p int) int {
	switch p {
	case 0:
		return DefaultAttestationPort
	case AttestationPortOff:
		return 0
	}
	return p
}
