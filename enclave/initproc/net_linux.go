package initproc

import (
	"net"
	"sync/atomic"
	"time"

	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave/podnet"
)

// egress is the enclave's egress filter, set by setEgress once the
// measured process description is read; until then nothing leaves (the app
// has not started).
var egress atomic.Pointer[podnet.Egress]

// lateFilter applies egress once it is set.
type lateFilter struct{}

func (lateFilter) Outbound(pkt []byte) bool {
	f := egress.Load()
	return f != nil && f.Outbound(pkt)
}

func (lateFilter) Inbound(pkt []byte) {
	if f := egress.Load(); f != nil {
		f.Inbound(pkt)
	}
}

// netStreams serves the enclave's network (enclave/podnet): the host's
// packet stream becomes the interface eth0, and the listening-ports
// stream tells the host which ports to publish on the Pod IP.
// Both wait until init has switched to the image's root (i.rooted): the
// host opens them as soon as the channel is up, while init may still be
// between unmounting the bootstrap /dev and mounting the new one.
func (i *initState) netStreams() map[string]func(net.Conn) {
	cfg := podnet.GuestConfig{Filter: lateFilter{}}
	rooted := func(s net.Conn) bool {
		select {
		case <-i.rooted:
			return true
		case <-time.After(rootedTimeout):
			s.Close() // setup failed: init reports that and powers off
			return false
		}
	}
	return map[string]func(net.Conn){
		podnet.KindPackets: func(s net.Conn) {
			if rooted(s) {
				podnet.ServePackets(s, cfg)
			}
		},
		podnet.KindPorts: func(s net.Conn) {
			if rooted(s) {
				podnet.ServePorts(s, cfg)
			}
		},
	}
}

// rootedTimeout bounds the wait of a network stream for the root switch.
const rootedTimeout = 5 * time.Minute

// setEgress installs the measured egress allowlist (none: allow all).
func setEgress(proc *ramdisk.Process) error {
	var rules contract.EgressRules
	if proc.EgressAllow != nil {
		all := ""
		for _, r := range *proc.EgressAllow {
			all += r + ","
		}
		var err error
		if rules, err = contract.ParseEgressAllow(all); err != nil {
			return err
		}
	}
	egress.Store(podnet.EgressFilter(rules))
	return nil
}
