package shim

import (
	"context"
	"errors"
	"fmt"
	"io"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eifcache"
)

// builderVersion is part of every cache key; it follows the EIF builder.
const builderVersion = "pending"

// checkLicense runs before anything is built or booted.
func checkLicense(ctx context.Context, spec *specs.Spec, plan Plan) error {
	return nil
}

// fetchPrebuilt fills the cache from nitro.k8s.anjuna.io/imageLocation.
func fetchPrebuilt(ctx context.Context, cache *eifcache.Cache, spec *specs.Spec, plan Plan) (*eifcache.Entry, error) {
	return nil, fmt.Errorf("annotation %s=%q: prebuilt EIFs from S3 are not supported yet", nitropod.ImageLocationAnnotation, plan.ImageLocation)
}

// buildEIF streams the EIF built from rootfs and plan.Process into w.
func buildEIF(ctx context.Context, w io.Writer, rootfs string, plan Plan, cfg Config) error {
	return errors.New("EIF builder not wired yet")
}
