package contract

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Bounds of the egress allowlist annotation.
const (
	MaxEgressAllowBytes = 4096
	MaxEgressRules      = 64
)

// EgressRule allows the enclave to reach Prefix, on Port only when Port is
// not 0 (TCP and UDP; other protocols only with Port 0).
type EgressRule struct {
	Prefix netip.Prefix
	Port   uint16
}

// String is the rule in the annotation's syntax (CIDR or CIDR:port).
func (r EgressRule) String() string {
	if r.Port == 0 {
		return r.Prefix.String()
	}
	return r.Prefix.String() + ":" + strconv.Itoa(int(r.Port))
}

// EgressRules is an allowlist; nil (no annotation) allows everything.
type EgressRules []EgressRule

// Allows says whether a packet to dst (port 0 for a protocol without ports)
// may leave the enclave.
func (rs EgressRules) Allows(dst netip.Addr, port uint16) bool {
	if rs == nil {
		return true
	}
	for _, r := range rs {
		if r.Prefix.Contains(dst) && (r.Port == 0 || r.Port == port) {
			return true
		}
	}
	return false
}

// Strings are the rules in the annotation's syntax (what is measured).
func (rs EgressRules) Strings() []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	return out
}

// ParseEgressAllow parses the nitropod.io/egress-allow annotation: entries
// separated by commas or white space, each an IPv4 address or CIDR
// (10.0.0.0/8, 10.96.0.10), optionally followed by :port (10.96.0.10:53,
// 0.0.0.0/0:443). Host names are not accepted: their addresses would come
// from a DNS answer the node can forge. An empty value allows nothing but
// the Pod's own loopback.
func ParseEgressAllow(s string) (EgressRules, error) {
	if len(s) > MaxEgressAllowBytes {
		return nil, fmt.Errorf("egress allowlist of %d bytes exceeds %d", len(s), MaxEgressAllowBytes)
	}
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' })
	if len(fields) > MaxEgressRules {
		return nil, fmt.Errorf("egress allowlist has %d entries, more than %d", len(fields), MaxEgressRules)
	}
	rules := EgressRules{}
	for _, f := range fields {
		r, err := parseEgressRule(f)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func parseEgressRule(f string) (EgressRule, error) {
	bad := func(why string) error {
		return fmt.Errorf("egress allowlist entry %q: %s (write an IPv4 address or CIDR, optionally with :port, e.g. 10.96.0.10:53 or 10.0.0.0/8)", f, why)
	}
	if strings.Count(f, ":") > 1 || strings.HasPrefix(f, "[") {
		return EgressRule{}, bad("only IPv4 is supported")
	}
	addr, port := f, ""
	if i := strings.LastIndexByte(f, ':'); i >= 0 {
		addr, port = f[:i], f[i+1:]
	}
	var r EgressRule
	if port != "" || strings.HasSuffix(f, ":") {
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return r, bad("the port must be 1..65535")
		}
		r.Port = uint16(p)
	}
	if strings.Contains(addr, "/") {
		pfx, err := netip.ParsePrefix(addr)
		if err != nil {
			return r, bad("not a CIDR")
		}
		r.Prefix = pfx.Masked()
	} else {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return r, bad("not an IP address (host names are not accepted)")
		}
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
	}
	if !r.Prefix.Addr().Is4() {
		return r, bad("only IPv4 is supported")
	}
	return r, nil
}
