package initproc

import (
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave/agent"
)

// deliveryHandler applies the host's delivery inside the enclave
// (agent.DeliveryHandler): the hostname, files at their paths, volumes as
// tmpfs mounts in enclave memory, and the env the app is started with.
type deliveryHandler struct {
	proc *ramdisk.Process

	mu        sync.Mutex
	delivered bool
	refused   error
	env       []string
	volumes   []*volume // by mount index; nil for non-volumes
}

type volume struct {
	m    agent.DeliveredMount
	root *os.Root // the tmpfs, opened before a read-only bind covered it
	cur  string
	seq  int
}

func newDeliveryHandler(p *ramdisk.Process) *deliveryHandler { return &deliveryHandler{proc: p} }

// Deliver checks d against the EIF's policy and applies it. A refusal is
// kept: the app is not started afterwards, whatever the host asks.
func (h *deliveryHandler) Deliver(d agent.Delivery) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.delivered {
		return fmt.Errorf("configuration was already delivered")
	}
	h.delivered = true
	if err := CheckDelivery(h.proc, d); err != nil {
		h.refused = err
		return err
	}
	if err := h.apply(d); err != nil {
		h.refused = err
		return err
	}
	h.env = d.Env
	return nil
}

func (h *deliveryHandler) apply(d agent.Delivery) error {
	if d.Hostname != "" {
		if err := unix.Sethostname([]byte(d.Hostname)); err != nil {
			return fmt.Errorf("setting the hostname: %w", err)
		}
		if err := os.WriteFile("/etc/hosts", []byte(Hosts(d.Hostname)), 0o644); err != nil {
			return fmt.Errorf("writing /etc/hosts: %w", err)
		}
	}
	h.volumes = make([]*volume, len(d.Mounts))
	for i, m := range d.Mounts {
		switch m.Kind {
		case agent.MountFile:
			if err := writeFileAtomic(m.Path, m.Files[0]); err != nil {
				return fmt.Errorf("delivering %s: %w", m.Path, err)
			}
		case agent.MountTmpfs:
			opts := "mode=0777"
			if m.SizeLimit > 0 {
				opts += ",size=" + strconv.FormatInt(m.SizeLimit, 10)
			}
			if err := mountTmpfs(m.Path, opts, m.ReadOnly); err != nil {
				return err
			}
		case agent.MountDir:
			v, err := h.mountVolume(m)
			if err != nil {
				return err
			}
			h.volumes[i] = v
		}
	}
	return nil
}

func mountTmpfs(p, opts string, ro bool) error {
	if err := os.MkdirAll(p, 0o755); err != nil {
		return fmt.Errorf("creating mount point %s: %w", p, err)
	}
	if err := unix.Mount("tmpfs", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mounting a tmpfs on %s: %w", p, err)
	}
	if ro {
		return remountReadOnly(p)
	}
	return nil
}

// remountReadOnly covers p with a read-only bind of itself; descriptors
// opened on p before stay writable (they belong to the tmpfs's own mount).
func remountReadOnly(p string) error {
	if err := unix.Mount(p, p, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding %s: %w", p, err)
	}
	if err := unix.Mount("", p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("making %s read-only: %w", p, err)
	}
	return nil
}

func (h *deliveryHandler) mountVolume(m agent.DeliveredMount) (*volume, error) {
	if err := mountTmpfs(m.Path, "mode=0755", false); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(m.Path)
	if err != nil {
		return nil, fmt.Errorf("opening volume %s: %w", m.Path, err)
	}
	v := &volume{m: m, root: root, seq: 1}
	if v.cur, err = writeVolume(root, m.Files, m.Atomic, v.seq, ""); err != nil {
		return nil, fmt.Errorf("delivering volume %s: %w", m.Path, err)
	}
	if m.ReadOnly {
		if err := remountReadOnly(m.Path); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// Update swaps in new files of an atomic volume.
func (h *deliveryHandler) Update(mount int, files []agent.DeliveredFile) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.refused != nil || mount < 0 || mount >= len(h.volumes) || h.volumes[mount] == nil || !h.volumes[mount].m.Atomic {
		return fmt.Errorf("mount %d cannot be updated", mount)
	}
	v := h.volumes[mount]
	probe := agent.Delivery{Mounts: []agent.DeliveredMount{{Path: v.m.Path, Kind: agent.MountDir, Files: files}}}
	if err := CheckDelivery(h.proc, probe); err != nil {
		return err
	}
	v.seq++
	cur, err := writeVolume(v.root, files, true, v.seq, v.cur)
	if err != nil {
		return fmt.Errorf("updating volume %s: %w", v.m.Path, err)
	}
	v.cur = cur
	return nil
}

// startEnv is the delivered env, or the reason the app must not start.
func (h *deliveryHandler) startEnv() ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.env, h.refused
}
