package launcher

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/internal/safefile"
)

// StatsFile in the bundle holds the enclave's latest CPU and memory use
// (a StatsRecord), replaced each time init reports it; the shim answers
// containerd's Stats from it. The bundle lives on the node's tmpfs
// (/run/containerd), so the rewrites every few seconds cost no disk I/O.
const StatsFile = "nitropod-stats.json"

// maxStatsFile bounds what the shim reads back.
const maxStatsFile = 4 << 10

// StatsRecord is the content of StatsFile.
type StatsRecord struct {
	// At is when the launcher received the figures (the host's clock).
	At    time.Time   `json:"at"`
	Stats agent.Stats `json:"stats"`
}

// writeStats replaces the bundle's StatsFile atomically (a reader sees the
// old or the new record, never half of one).
func writeStats(bundle string, r StatsRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(bundle, "."+StatsFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing enclave stats: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(bundle, StatsFile)); err != nil {
		return fmt.Errorf("writing enclave stats: %w", err)
	}
	return nil
}

// ReadStats reads the bundle's StatsFile.
func ReadStats(bundle string) (StatsRecord, error) {
	var r StatsRecord
	err := safefile.ReadJSON(filepath.Join(bundle, StatsFile), maxStatsFile, &r)
	return r, err
}
