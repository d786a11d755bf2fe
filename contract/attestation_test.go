package contract

import (
	"strings"
	"testing"
)

func TestParseAttestationPort(t *testing.T) {
	for in, want := range map[string]int{"": 0, "off": AttestationPortOff, "9443": 9443, "1": 1, "65535": 65535} {
		got, err := ParseAttestationPort(in)
		if err != nil || got != want {
			t.Errorf("ParseAttestationPort(%q) = %d, %v; want %d", in, got, err, want)
		}
		if err := CheckAttestationPort(got); err != nil {
			t.Errorf("CheckAttestationPort(%d): %v", got, err)
		}
	}
	for _, in := range []string{"0", "-1", "65536", "http", "9910/tcp", "OFF", strings.Repeat("9", 100)} {
		_, err := ParseAttestationPort(in)
		if err == nil || !strings.Contains(err.Error(), AttestationPortAnnotation) || !strings.Contains(err.Error(), `"off"`) {
			t.Errorf("ParseAttestationPort(%q): %v, want an error naming the annotation and the fix", in, err)
		}
	}
	for _, p := range []int{-2, 70000} {
		if err := CheckAttestationPort(p); err == nil {
			t.Errorf("CheckAttestationPort(%d) accepted", p)
		}
	}
	for in, want := range map[int]int{0: DefaultAttestationPort, AttestationPortOff: 0, 8443: 8443} {
		if got := EffectiveAttestationPort(in); got != want {
			t.Errorf("EffectiveAttestationPort(%d) = %d, want %d", in, got, want)
		}
	}
}
