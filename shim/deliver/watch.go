package deliver

import (
	"context"
	"time"

	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/enclave/agent"
)

// Updater sends a new version of a volume's files into the enclave
// (*agent.Deliverer).
type Updater interface {
	Update(ctx context.Context, mount int, files []agent.DeliveredFile) error
}

// DefaultInterval is how often Watch looks at a volume's ..data link:
// kubelet's update then reaches the enclave within it plus one round trip.
const DefaultInterval = time.Second

// Watch follows kubelet's updates of the atomic volumes of p (d is what was
// delivered, versions what Collect returned) and sends each new version to
// u, until ctx ends. An update that would take the delivery over the cap,
// or that cannot be read, is logged and retried at the next change.
func Watch(ctx context.Context, p Plan, d agent.Delivery, versions []string, u Updater, interval time.Duration, logf func(string, ...any)) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	limit := p.MaxBytes
	if limit <= 0 {
		limit = contract.DefaultMaxDeliveredBytes
	}
	sizes := make([]int64, len(d.Mounts))
	fixed := d.Size()
	watched := false
	for i, m := range d.Mounts {
		sizes[i] = agent.FilesSize(m.Files)
		fixed -= sizes[i]
		watched = watched || m.Atomic
	}
	if !watched {
		return
	}
	versions = append([]string(nil), versions...)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i, m := range d.Mounts {
			if !m.Atomic {
				continue
			}
			ver, err := Version(p.Mounts[i].Source)
			if err != nil || ver == "" || ver == versions[i] {
				continue
			}
			others := fixed
			for j, s := range sizes {
				if j != i {
					others += s
				}
			}
			b := &budget{limit: limit, total: others}
			var files []agent.DeliveredFile
			if err := walk(p.Mounts[i].Source, ver, "", 0, &files, b); err != nil {
				logf("reading the update of volume %s (%s): %v", p.Mounts[i].Volume, m.Path, err)
				continue
			}
			if b.over() {
				logf("not delivering the update of volume %s (%s): %v", p.Mounts[i].Volume, m.Path, &TooLargeError{Size: b.total, Limit: limit})
				versions[i] = ver
				continue
			}
			uctx, cancel := context.WithTimeout(ctx, time.Minute)
			err = u.Update(uctx, i, files)
			cancel()
			if err != nil {
				logf("delivering the update of volume %s (%s): %v", p.Mounts[i].Volume, m.Path, err)
				if ctx.Err() != nil {
					return
				}
				continue
			}
			versions[i] = ver
			sizes[i] = agent.FilesSize(files)
			logf("delivered version %s of volume %s (%s)", ver, p.Mounts[i].Volume, m.Path)
		}
	}
}
