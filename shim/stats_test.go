package shim

import (
	"testing"
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"

	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/shim/launcher"
)

func TestWithEnclaveStats(t *testing.T) {
	now := time.Now()
	st := agent.Stats{CPUNanos: 7_000_000_000, UserNanos: 5_000_000_000, SystemNanos: 2_000_000_000,
		MemoryTotal: 480 << 20, MemoryUsage: 120 << 20, InactiveFile: 20 << 20, Anon: 64 << 20, Processes: 2}
	rec := launcher.StatsRecord{At: now.Add(-3 * time.Second), Stats: st}

	// cgroup v1: the fields containerd's CRI reads.
	launcherV1 := &v1.Metrics{
		Pids:   &v1.PidsStat{Current: 9},
		CPU:    &v1.CPUStat{Usage: &v1.CPUUsage{Total: 1}},
		Memory: &v1.MemoryStat{Usage: &v1.MemoryEntry{Usage: 5 << 20}},
	}
	m1 := withEnclaveStats(launcherV1, rec, now).(*v1.Metrics)
	if m1.CPU.Usage.Total != st.CPUNanos || m1.CPU.Usage.User != st.UserNanos || m1.CPU.Usage.Kernel != st.SystemNanos {
		t.Errorf("v1 cpu %+v", m1.CPU.Usage)
	}
	if m1.Memory.Usage.Usage != 120<<20 || m1.Memory.TotalInactiveFile != 20<<20 || m1.Memory.TotalRSS != 64<<20 || m1.Memory.Usage.Limit != 480<<20 {
		t.Errorf("v1 memory %+v", m1.Memory)
	}
	if m1.Pids.Current != 9 {
		t.Errorf("v1 pids %d, want the launcher's 9", m1.Pids.Current)
	}

	// cgroup v2.
	m2 := withEnclaveStats(&v2.Metrics{Pids: &v2.PidsStat{Current: 4}}, rec, now).(*v2.Metrics)
	if m2.CPU.UsageUsec != 7_000_000 || m2.CPU.UserUsec != 5_000_000 || m2.CPU.SystemUsec != 2_000_000 {
		t.Errorf("v2 cpu %+v", m2.CPU)
	}
	if m2.Memory.Usage != 120<<20 || m2.Memory.InactiveFile != 20<<20 || m2.Memory.Anon != 64<<20 || m2.Memory.UsageLimit != 480<<20 {
		t.Errorf("v2 memory %+v", m2.Memory)
	}

	// A stale record (a hung enclave, an init without stats) is not used.
	stale := launcher.StatsRecord{At: now.Add(-maxStatsAge - time.Second), Stats: st}
	m := withEnclaveStats(&v1.Metrics{CPU: &v1.CPUStat{Usage: &v1.CPUUsage{Total: 1}}}, stale, now).(*v1.Metrics)
	if m.CPU.Usage.Total != 1 {
		t.Errorf("a stale record replaced the launcher's cpu: %+v", m.CPU.Usage)
	}
	if got := withEnclaveStats(&v2.Metrics{}, launcher.StatsRecord{}, now).(*v2.Metrics); got.CPU != nil {
		t.Errorf("an empty record set cpu %+v", got.CPU)
	}
}
