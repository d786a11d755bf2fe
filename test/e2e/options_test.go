//go:build e2e

package e2e

import (
	"path/filepath"
	"testing"

	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/test/cluster"
)

// clusterOptions configures the cluster; with nitro, containerd gets the
// nitro runtime from deploy/'s drop-in.
func clusterOptions(t *testing.T, nitro bool) cluster.Options {
	o := cluster.Options{}
	if nitro {
		o.ContainerdDropIn = filepath.Join(testenv.RepoRoot(), "deploy", "helm", "nitropod", "files", "containerd-nitro.toml")
		o.ShimPath = testenv.Binary(t, "containerd-shim-nitro-v1")
		// containerd 1.6 ignores runtime_path and finds shims on its PATH
		// (the node installer links the shim into /usr/local/bin).
		o.ExtraPath = filepath.Dir(o.ShimPath)
	}
	return o
}
