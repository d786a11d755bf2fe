package launcher

import (
	"context"
	"fmt"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/internal/safefile"
	"github.com/nitropod/nitropod/shim/deliver"
)

// maxConfigJSON bounds the bundle's config.json the launcher reads the
// delivered env values from.
const maxConfigJSON = 64 << 20

// delivery is the launcher's part in delivered configuration: it collects
// the values when the enclave starts, delivers them through the agent
// channel (enclave.RunIO.Deliver) and then follows volume updates.
type delivery struct {
	plan     deliver.Plan
	d        agent.Delivery
	versions []string
	dl       *agent.Deliverer
}

// collectDelivery reads what spec.Deliver names: env values from the
// bundle's config.json (written by containerd, where they already are) and
// the volumes' files. Nothing is written to disk.
func collectDelivery(spec Spec) (*delivery, error) {
	var oci specs.Spec
	if err := safefile.ReadJSON(filepath.Join(spec.Bundle, "config.json"), maxConfigJSON, &oci); err != nil {
		return nil, fmt.Errorf("reading the container's env for delivery: %w", err)
	}
	var env []string
	if oci.Process != nil {
		env = oci.Process.Env
	}
	d, versions, err := deliver.Collect(*spec.Deliver, env)
	if err != nil {
		return nil, err
	}
	return &delivery{plan: *spec.Deliver, d: d, versions: versions}, nil
}

// send is enclave.RunIO.Deliver.
func (dv *delivery) send(ctx context.Context, c *agent.Client) error {
	dl, err := c.Deliver(ctx, dv.d)
	if err != nil {
		return fmt.Errorf("delivering configuration: %w", err)
	}
	dv.dl = dl
	return nil
}

// watch carries volume updates into the enclave until ctx ends.
func (dv *delivery) watch(ctx context.Context, logf func(string, ...any)) {
	if dv.dl == nil {
		return
	}
	deliver.Watch(ctx, dv.plan, dv.d, dv.versions, dv.dl, deliver.DefaultInterval, logf)
}
