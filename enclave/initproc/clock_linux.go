package initproc

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/enclave/agent"
)

// The enclave has no trustworthy clock of its own (a Nitro enclave has no
// RTC and no network time), so init keeps it to the host's: once before the
// app starts and then every clockSyncInterval, stepping it when it is off
// by more than clockStepThreshold. Time is therefore host-supplied: a host
// can lie about it (README, "Time inside the enclave").
const (
	clockSyncInterval  = 5 * time.Second
	clockStepThreshold = 10 * time.Millisecond
	// statsInterval is how often init reports the enclave's CPU and memory
	// use; kubelet reads container stats every 10 s or so.
	statsInterval = 2 * time.Second
)

// syncClock sets the enclave's clock to the host's when they differ by more
// than clockStepThreshold.
func (i *initState) syncClock(ctx context.Context) error {
	off, rtt, err := i.guest.ClockOffset(ctx)
	if err != nil {
		return err
	}
	if off > -clockStepThreshold && off < clockStepThreshold {
		return nil
	}
	ts := unix.NsecToTimespec(time.Now().Add(off).UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return err
	}
	if off > time.Second || off < -time.Second {
		i.logf("clock set from the host's (it was %v off; round trip %v)", off.Round(time.Millisecond), rtt.Round(time.Microsecond))
	}
	return nil
}

// keepTime syncs the clock and reports stats until the host goes away or
// does not offer the features. It runs for the enclave's life.
func (i *initState) keepTime() {
	clock := time.NewTicker(clockSyncInterval)
	defer clock.Stop()
	stats := time.NewTicker(statsInterval)
	defer stats.Stop()
	clockOn, statsOn := i.guest.HostHas(agent.FeatureClock), i.guest.HostHas(agent.FeatureStats)
	report := func() {
		st, err := ReadStats("/proc")
		if err != nil {
			i.logf("measuring stats: %v", err)
			return
		}
		if err := i.guest.SendStats(st); err != nil {
			statsOn = false
		}
	}
	if statsOn {
		report()
	}
	for clockOn || statsOn {
		select {
		case <-clock.C:
			if !clockOn {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := i.syncClock(ctx)
			cancel()
			if errors.Is(err, agent.ErrClosed) || errors.Is(err, agent.ErrNoFeature) {
				clockOn = false
			} else if err != nil {
				i.logf("keeping the clock: %v", err)
			}
		case <-stats.C:
			if statsOn {
				report()
			}
		}
	}
}
