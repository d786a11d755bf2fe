package launcher

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/enclave/agent"
)

func TestStatsFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := StatsRecord{At: time.Now().Round(0).UTC(), Stats: agent.Stats{CPUNanos: 1, MemoryUsage: 2, MemoryTotal: 3}}
	if err := writeStats(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadStats(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !got.At.Equal(want.At) || got.Stats != want.Stats {
		t.Errorf("read %+v, want %+v", got, want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("bundle holds %d files after a write, want only %s", len(ents), StatsFile)
	}
	// A file grown past the bound (not the launcher's) is refused.
	if err := os.WriteFile(filepath.Join(dir, StatsFile), []byte(strings.Repeat(" ", maxStatsFile+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadStats(dir); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized stats file: %v", err)
	}
}
