package shim

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eif"
)

func TestCheckExpectedBuilt(t *testing.T) {
	m := eif.Measurements{HashAlgorithm: eif.HashAlgorithm, PCR0: strings.Repeat("ab", 48), PCR1: "11", PCR2: "22"}
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want string
	}{
		{"no pin", nil, ""},
		{"matching pin, any case and spaces", map[string]string{nitropod.ExpectedPCR0Annotation: " " + strings.ToUpper(m.PCR0) + "\n"}, ""},
		{"other PCR0", map[string]string{nitropod.ExpectedPCR0Annotation: strings.Repeat("cd", 48)}, "has PCR0 " + m.PCR0 + " but annotation nitropod.io/expected-pcr0 expects " + strings.Repeat("cd", 48)},
		{"PCR8 on a node build", map[string]string{nitropod.ExpectedPCR8Annotation: strings.Repeat("ef", 48)}, "is not signed"},
	} {
		err := checkExpectedBuilt(&specs.Spec{Annotations: tc.ann}, m)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}
