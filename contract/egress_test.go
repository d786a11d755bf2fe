package contract

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseEgressAllow(t *testing.T) {
	rs, err := ParseEgressAllow("10.96.0.10:53, 192.0.2.0/24\n 0.0.0.0/0:443 10.1.2.3/8")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(rs.Strings(), " "), "10.96.0.10/32:53 192.0.2.0/24 0.0.0.0/0:443 10.0.0.0/8"; got != want {
		t.Errorf("rules %q, want %q", got, want)
	}
	for _, tc := range []struct {
		dst  string
		port uint16
		want bool
	}{
		{"10.96.0.10", 53, true},
		{"10.96.0.11", 53, true}, // in 10.0.0.0/8
		{"192.0.2.9", 80, true},
		{"192.0.2.9", 0, true},
		{"203.0.113.5", 443, true},
		{"203.0.113.5", 80, false},
		{"203.0.113.5", 0, false},
	} {
		if got := rs.Allows(netip.MustParseAddr(tc.dst), tc.port); got != tc.want {
			t.Errorf("Allows(%s, %d) = %v, want %v", tc.dst, tc.port, got, tc.want)
		}
	}
	if !EgressRules(nil).Allows(netip.MustParseAddr("203.0.113.5"), 1) {
		t.Error("no allowlist must allow everything")
	}
	empty, err := ParseEgressAllow("  ")
	if err != nil || empty == nil || empty.Allows(netip.MustParseAddr("10.0.0.1"), 80) {
		t.Errorf("an empty allowlist: %v, %v; want one that allows nothing", empty, err)
	}
}

func TestParseEgressAllowErrors(t *testing.T) {
	for in, want := range map[string]string{
		"example.com:443":               "host names are not accepted",
		"10.0.0.1:0":                    "port must be 1..65535",
		"10.0.0.1:99999":                "port must be 1..65535",
		"10.0.0.1:":                     "port must be 1..65535",
		"10.0.0.0/33":                   "not a CIDR",
		"2001:db8::/32":                 "only IPv4",
		"[2001:db8::1]:443":             "only IPv4",
		strings.Repeat("10.0.0.1,", 65): "more than 64",
		strings.Repeat(" ", 5000):       "exceeds 4096",
	} {
		_, err := ParseEgressAllow(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseEgressAllow(%.40q) = %v, want an error containing %q", in, err, want)
		}
	}
}

func FuzzParseEgressAllow(f *testing.F) {
	f.Add("10.96.0.10:53, 0.0.0.0/0:443")
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParseEgressAllow(s)
		if err != nil {
			return
		}
		// What is measured parses back to the same rules.
		again, err := ParseEgressAllow(strings.Join(rs.Strings(), ","))
		if err != nil || len(again) != len(rs) {
			t.Fatalf("rules %q do not parse back: %v", rs.Strings(), err)
		}
		for i := range rs {
			if again[i] != rs[i] {
				t.Fatalf("rule %d: %v parsed back as %v", i, rs[i], again[i])
			}
		}
	})
}
