package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Optional features a host names in its hello. Init uses one only when the
// host named it: an older host would not answer (clock) or would take the
// message for a protocol error, so the control version is unchanged.
const (
	// FeatureClock: the host answers MsgClock with its wall clock.
	FeatureClock = "clock"
	// FeatureStats: the host accepts MsgStats.
	FeatureStats = "stats"
)

// hostFeatures are what this package's Client answers.
var hostFeatures = []string{FeatureClock, FeatureStats}

// Stats is the enclave's CPU and memory use as its own kernel counts it
// (/proc/stat, /proc/meminfo): what the app costs inside the enclave, which
// the host cannot see from its side (on Nitro the enclave's CPUs and memory
// are carved out of the instance; in emulation QEMU's own use would mix in).
type Stats struct {
	// CPUNanos is the time the enclave's CPUs spent outside idle and
	// iowait since boot; UserNanos and SystemNanos split it.
	CPUNanos    uint64 `json:"cpuNs"`
	UserNanos   uint64 `json:"userNs"`
	SystemNanos uint64 `json:"systemNs"`
	// MemoryTotal is the memory the enclave kernel manages (MemTotal).
	MemoryTotal uint64 `json:"memTotal"`
	// MemoryUsage is MemTotal - MemFree: everything in use, including the
	// image's files (the root filesystem lives in enclave memory) and the
	// page cache.
	MemoryUsage uint64 `json:"memUsage"`
	// InactiveFile is reclaimable page cache; the working set is
	// MemoryUsage - InactiveFile, as for a cgroup.
	InactiveFile uint64 `json:"inactiveFile"`
	// Anon is anonymous memory (AnonPages): the processes' own pages.
	Anon uint64 `json:"anon"`
	// Processes is the number of processes (threads excluded).
	Processes uint64 `json:"procs"`
}

// WorkingSet is MemoryUsage less reclaimable page cache.
func (s Stats) WorkingSet() uint64 {
	if s.InactiveFile > s.MemoryUsage {
		return 0
	}
	return s.MemoryUsage - s.InactiveFile
}

// maxClockRTT bounds a usable clock round trip: an answer that took longer
// says more about a busy channel than about the time.
const maxClockRTT = 2 * time.Second

// ErrNoFeature is returned when the host did not name a feature in its hello.
var ErrNoFeature = errors.New("the host does not offer this feature (older nitropod on the node)")

// HostHas reports whether the host named feature in its hello.
func (g *Guest) HostHas(feature string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Contains(g.features, feature)
}

// ClockOffset asks the host for its wall clock and returns how far the
// host's clock is ahead of this one (negative: behind), estimating the
// answer's transit as half the round trip, and the round trip.
func (g *Guest) ClockOffset(ctx context.Context) (offset, rtt time.Duration, err error) {
	if err := g.wait(ctx, g.ctrlCh); err != nil {
		return 0, 0, fmt.Errorf("asking the host for the time: %w", err)
	}
	if !g.HostHas(FeatureClock) {
		return 0, 0, fmt.Errorf("asking the host for the time: %w", ErrNoFeature)
	}
	g.clockMu.Lock()
	defer g.clockMu.Unlock()
	select { // an answer to an earlier request that timed out
	case <-g.clockCh:
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, maxClockRTT)
	defer cancel()
	t0 := time.Now()
	if err := g.send(Message{Type: MsgClock}); err != nil {
		return 0, 0, fmt.Errorf("asking the host for the time: %w", err)
	}
	var host int64
	select {
	case host = <-g.clockCh:
	case <-g.closed:
		return 0, 0, fmt.Errorf("asking the host for the time: %w", ErrClosed)
	case <-ctx.Done():
		return 0, 0, fmt.Errorf("asking the host for the time: no answer: %w", ctx.Err())
	}
	t1 := time.Now()
	rtt = t1.Sub(t0) // monotonic
	hostNow := time.Unix(0, host).Add(rtt / 2)
	return hostNow.Sub(t1.Round(0)), rtt, nil // wall clocks
}

// SendStats reports st to the host.
func (g *Guest) SendStats(st Stats) error {
	if !g.HostHas(FeatureStats) {
		return fmt.Errorf("reporting stats: %w", ErrNoFeature)
	}
	return g.send(Message{Type: MsgStats, Stats: &st})
}

// OnStats registers f to receive every Stats init sends, from the goroutine
// that calls Recv; call it before the first Recv after Connect.
func (c *Client) OnStats(f func(Stats)) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.onStats = f
}

// handle answers the control messages the Client serves itself (clock,
// stats) and reports whether m was one of them.
func (c *Client) handle(m Message) (bool, error) {
	switch m.Type {
	case MsgClock:
		return true, c.Send(Message{Type: MsgClock, Time: time.Now().UnixNano()})
	case MsgStats:
		c.hmu.Lock()
		f := c.onStats
		c.hmu.Unlock()
		if f != nil && m.Stats != nil {
			f(*m.Stats)
		}
		return true, nil
	}
	return false, nil
}
