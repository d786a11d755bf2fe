package launcher

import (
	"fmt"

	"github.com/nitropod/nitropod/eif"
)

// MeasurementsLine is how the launcher reports the enclave's measurements
// at the top of the container's log (`kubectl logs`), so that the cluster's
// users can compare them with `nitropod pcr` without access to the node.
func MeasurementsLine(m eif.Measurements) string {
	s := fmt.Sprintf("nitropod: enclave measurements HashAlgorithm=%q PCR0=%s PCR1=%s PCR2=%s", m.HashAlgorithm, m.PCR0, m.PCR1, m.PCR2)
	if m.PCR8 != "" {
		s += " PCR8=" + m.PCR8
	}
	return s
}
