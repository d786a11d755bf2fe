package podnet

import (
	"bufio"
	"encoding/hex"
	"io"
	"slices"
	"strconv"
	"strings"
)

// tcpListen is the state column of a listening socket in /proc/net/tcp.
const tcpListen = "0A"

// ListeningPorts parses /proc/net/tcp or /proc/net/tcp6 text and returns
// the ports with a listening socket bound to an address other than
// loopback (those reachable from the Pod network), sorted, without
// duplicates.
func ListeningPorts(r io.Reader) []uint16 {
	var ports []uint16
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != tcpListen {
			continue
		}
		addr, port, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(port, 16, 16)
		if err != nil || p == 0 {
			continue
		}
		if loopbackHex(addr) {
			continue
		}
		ports = append(ports, uint16(p))
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// loopbackHex says whether a /proc/net/tcp{,6} address (in the kernel's
// byte order, 32-bit words in host order: little-endian here) is loopback.
func loopbackHex(s string) bool {
	b, err := hex.DecodeString(s)
	if err != nil {
		return true // unparsable: not reported
	}
	switch len(b) {
	case 4:
		return b[3] == 127 // little-endian: the first octet is the last byte
	case 16:
		// ::1 is the words 0,0,0,1 (each word's low byte first);
		// ::ffff:127.x.y.z has 0xffff in word 2 and 127 as the last byte.
		w := func(i int) []byte { return b[4*i : 4*i+4] }
		zero := func(x []byte) bool { return x[0]|x[1]|x[2]|x[3] == 0 }
		if zero(w(0)) && zero(w(1)) && zero(w(2)) && w(3)[0] == 1 && w(3)[1] == 0 && w(3)[2] == 0 && w(3)[3] == 0 {
			return true
		}
		if zero(w(0)) && zero(w(1)) && w(2)[0] == 0xff && w(2)[1] == 0xff && w(2)[2] == 0 && w(2)[3] == 0 && w(3)[3] == 127 {
			return true
		}
	}
	return false
}
