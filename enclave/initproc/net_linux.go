package initproc

import (
	"net"

	"github.com/nitropod/nitropod/enclave/podnet"
)

// netStreams serves the enclave's network (enclave/podnet): the host's
// packet stream becomes the interface eth0, and the listening-ports
// stream tells the host which ports to publish on the Pod IP.
func (i *initState) netStreams() map[string]func(net.Conn) {
	cfg := podnet.GuestConfig{}
	return map[string]func(net.Conn){
		podnet.KindPackets: func(s net.Conn) {
			podnet.ServePackets(s, cfg)
		},
		podnet.KindPorts: func(s net.Conn) { podnet.ServePorts(s, cfg) },
	}
}
