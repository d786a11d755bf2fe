package agent

import "fmt"

// On Nitro the agent channel is an AF_VSOCK connection that init opens to
// the parent instance (CID ParentCID) at ChannelPort(its own CID), where the
// launcher listens. See the package doc for why init dials out instead of
// listening.
const (
	// ChannelPortBase is added to the enclave's CID to give the parent port
	// the launcher listens on. It puts the channel ports in the upper half of
	// the port space, clear of the well-known low ports (nitro-cli's
	// heartbeat 9000, vsock-proxy's 8000).
	ChannelPortBase = 1 << 31
	// MinChannelCID and MaxChannelCID bound the enclave CIDs that have a
	// channel port: 0-3 are reserved by vsock and Nitro (3 is the parent),
	// and the largest port, 0xFFFFFFFF, means "any port" to vsock.
	MinChannelCID = 4
	MaxChannelCID = 1<<31 - 2
)

// ChannelPort returns the parent vsock port of the agent channel of the
// enclave with vsock CID cid.
func ChannelPort(cid uint32) (uint32, error) {
	if cid < MinChannelCID || cid > MaxChannelCID {
		return 0, fmt.Errorf("enclave CID %d has no agent channel port: the channel needs a CID from %d to %d", cid, MinChannelCID, MaxChannelCID)
	}
	return ChannelPortBase + cid, nil
}
