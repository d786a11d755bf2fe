package shim

import (
	"errors"
	"fmt"
	"os"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eif"
)

// eifMeasurements reads the measurements of the EIF at path (one pass over
// the file: it also checks the CRC and any signature).
func eifMeasurements(path string) (eif.Measurements, error) {
	f, err := os.Open(path)
	if err != nil {
		return eif.Measurements{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return eif.Measurements{}, err
	}
	ef, err := eif.Open(f, st.Size())
	if err != nil {
		return eif.Measurements{}, fmt.Errorf("measuring %s: %w", path, err)
	}
	rep, err := ef.Verify()
	if err != nil {
		return eif.Measurements{}, fmt.Errorf("measuring %s: %w", path, err)
	}
	return rep.Measurements, nil
}

// checkExpectedBuilt applies the Pod's nitropod.io/expected-pcr0 and
// expected-pcr8 to an EIF the node built: a PCR0 other than the pinned one
// (the image, the template or the node's blob set or init changed) fails
// the container, as does any expected PCR8, since the node does not sign
// what it builds.
func checkExpectedBuilt(spec *specs.Spec, m eif.Measurements) error {
	norm := func(s string) string { return strings.ToLower(strings.TrimSpace(s)) }
	if want := norm(spec.Annotations[nitropod.ExpectedPCR0Annotation]); want != "" && want != m.PCR0 {
		return fmt.Errorf("the enclave image built on this node has PCR0 %s but annotation %s expects %s: "+
			"compare with `nitropod pcr -f` for this manifest and the node's blob set and init, then update the annotation", m.PCR0, nitropod.ExpectedPCR0Annotation, want)
	}
	if want := norm(spec.Annotations[nitropod.ExpectedPCR8Annotation]); want != "" {
		return errors.New("annotation " + nitropod.ExpectedPCR8Annotation + " pins a signing certificate, but an enclave image built on the node is not signed: " +
			"push a signed EIF and name it with " + nitropod.ImageLocationAnnotation + ", or remove the annotation")
	}
	return nil
}
