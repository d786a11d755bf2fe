package shim

import (
	"strings"
	"testing"

	"github.com/nitropod/nitropod/eif/s3"
)

func TestConfigS3Limits(t *testing.T) {
	def := DefaultConfig()
	if len(def.S3.NodeIdentityBuckets) != 0 {
		t.Errorf("default s3.node_identity_buckets = %v, want none (per-Pod identity required)", def.S3.NodeIdentityBuckets)
	}
	if got := def.MaxEIFDownload(); got != DefaultMaxEIFBytes {
		t.Errorf("default EIF download limit %d, want %d", got, DefaultMaxEIFBytes)
	}
	cfg, err := ParseConfig([]byte("cache_max_bytes = 1000\n[s3]\nnode_identity_buckets = [\"releases\"]\nmax_eif_bytes = 5000\n[license]\ncluster_id = \"c-1\"\n"), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.MaxEIFDownload(); got != 1000 {
		t.Errorf("limit %d with max_eif_bytes 5000 and cache_max_bytes 1000, want the cache cap 1000", got)
	}
	if cfg.License.ClusterID != "c-1" {
		t.Errorf("license.cluster_id = %q", cfg.License.ClusterID)
	}
	if err := s3.CheckNodeIdentity(s3.Location{Bucket: "releases", Key: "a.eif"}, nil, cfg.S3.NodeIdentityBuckets); err != nil {
		t.Errorf("allowed bucket refused: %v", err)
	}
	err = s3.CheckNodeIdentity(s3.Location{Bucket: "private", Key: "a.eif"}, nil, def.S3.NodeIdentityBuckets)
	if err == nil || !strings.Contains(err.Error(), "s3.node_identity_buckets") {
		t.Errorf("default config: node identity for a bucket: %v, want a refusal naming s3.node_identity_buckets", err)
	}
	if cfg, err = ParseConfig([]byte("[s3]\nmax_eif_bytes = 5000\n"), DefaultConfig()); err != nil || cfg.MaxEIFDownload() != 5000 {
		t.Errorf("max_eif_bytes 5000: %d, %v", cfg.MaxEIFDownload(), err)
	}
	if _, err := ParseConfig([]byte("[s3]\nmax_eif_bytes = -1\n"), DefaultConfig()); err == nil || !strings.Contains(err.Error(), "s3.max_eif_bytes") {
		t.Errorf("negative max_eif_bytes: %v", err)
	}
}
