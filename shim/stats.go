package shim

import (
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"

	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/shim/launcher"
)

// maxStatsAge is how old the enclave's last report may be and still stand
// for its CPU and memory use (init reports every 2 s).
const maxStatsAge = 30 * time.Second

// withEnclaveStats replaces the CPU and memory figures of the container's
// cgroup metrics (which count the launcher, a host process of a few MiB) by
// what the enclave's own kernel counts for the app — what kubelet's summary
// API and `kubectl top` should show. Other figures (pids, I/O) stay the
// launcher's. A record older than maxStatsAge (an init from before stats,
// or a hung enclave) is not used.
func withEnclaveStats(m any, rec launcher.StatsRecord, now time.Time) any {
	if rec.At.IsZero() || now.Sub(rec.At) > maxStatsAge {
		return m
	}
	st := rec.Stats
	switch m := m.(type) {
	case *v1.Metrics:
		m.CPU = &v1.CPUStat{Usage: &v1.CPUUsage{Total: st.CPUNanos, User: st.UserNanos, Kernel: st.SystemNanos}}
		m.Memory = v1Memory(st)
		return m
	case *v2.Metrics:
		m.CPU = &v2.CPUStat{UsageUsec: st.CPUNanos / 1000, UserUsec: st.UserNanos / 1000, SystemUsec: st.SystemNanos / 1000}
		m.Memory = &v2.MemoryStat{Usage: st.MemoryUsage, UsageLimit: st.MemoryTotal, Anon: st.Anon, InactiveFile: st.InactiveFile}
		return m
	}
	return m
}

// v1Memory fills the fields containerd's CRI reads from cgroup v1 memory
// stats: usage, total_inactive_file (working set = usage - that) and
// total_rss.
func v1Memory(st agent.Stats) *v1.MemoryStat {
	return &v1.MemoryStat{
		RSS: st.Anon, TotalRSS: st.Anon,
		InactiveFile: st.InactiveFile, TotalInactiveFile: st.InactiveFile,
		HierarchicalMemoryLimit: st.MemoryTotal,
		Usage:                   &v1.MemoryEntry{Usage: st.MemoryUsage, Limit: st.MemoryTotal},
	}
}
