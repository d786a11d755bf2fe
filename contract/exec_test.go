package contract

import (
	"strings"
	"testing"
)

// TestExecPolicyExactMatch: only an identical argv vector is allowed: no
// prefix, no extra or missing argument, no whitespace or shell folding.
func TestExecPolicyExactMatch(t *testing.T) {
	p := &ExecPolicy{Commands: [][]string{{"cat", "/tmp/healthy"}, {"sh", "-c", "test -f /tmp/ready"}}}
	for _, tc := range []struct {
		argv []string
		ok   bool
	}{
		{[]string{"cat", "/tmp/healthy"}, true},
		{[]string{"sh", "-c", "test -f /tmp/ready"}, true},
		{[]string{"cat"}, false},
		{[]string{"cat", "/tmp/healthy", "/etc/shadow"}, false},
		{[]string{"cat", "/tmp/healthy "}, false},
		{[]string{"cat", "/tmp/*"}, false},
		{[]string{"cat /tmp/healthy"}, false},
		{[]string{"/bin/cat", "/tmp/healthy"}, false},
		{[]string{"sh", "-c", "test -f /tmp/ready; sh"}, false},
		{[]string{"sh", "-c", "test  -f /tmp/ready"}, false},
		{[]string{"CAT", "/tmp/healthy"}, false},
		{nil, false},
	} {
		if got := p.Allows(tc.argv); got != tc.ok {
			t.Errorf("Allows(%q) = %v, want %v", tc.argv, got, tc.ok)
		}
	}
	if (*ExecPolicy)(nil).Allows([]string{"true"}) {
		t.Error("a nil policy (no list measured) allows a command")
	}
	if (&ExecPolicy{}).Allows([]string{"true"}) {
		t.Error("an empty policy allows a command")
	}
	if !(&ExecPolicy{Any: true}).Allows([]string{"sh"}) {
		t.Error("a debug policy refuses a command")
	}
}

// TestExecRefusal: the message says that production enclaves run only
// measured commands, how to add one (annotation, exact argv, re-create),
// and quotes the refused command bounded.
func TestExecRefusal(t *testing.T) {
	msg := ExecRefusal([]string{"sh", "-c", "id"})
	for _, want := range []string{
		"production enclaves run only measured commands",
		ExecCommandsAnnotation,
		`{"<container>":[["sh","-c","id"]]}`,
		"re-create the Pod",
		`["sh" "-c" "id"]`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q lacks %q", msg, want)
		}
	}
	huge := make([]string, 10000)
	for i := range huge {
		huge[i] = strings.Repeat("y", 1000)
	}
	if msg := ExecRefusal(huge); len(msg) > 2048 {
		t.Errorf("refusal of a huge argv is %d bytes: it must stay bounded", len(msg))
	}
}

func TestParseExecCommands(t *testing.T) {
	m, err := ParseExecCommands(`{"app":[["cat","/tmp/x"]],"side":[]}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(m["app"]) != 1 || m["app"][0][1] != "/tmp/x" {
		t.Errorf("parsed %v", m)
	}
	for _, bad := range []string{
		`{"app":[["a\u0000b"]]}`,
		`{"app":[[""]]}`,
		`{"app":[["` + strings.Repeat("a", MaxExecCommandBytes/2) + `","` + strings.Repeat("a", MaxExecCommandBytes/2) + `"]]}`,
		`{"app":[[` + strings.TrimSuffix(strings.Repeat(`"a",`, MaxExecArgs+1), ",") + `]]}`,
		`{"app":"cat /tmp/x"}`,
	} {
		if _, err := ParseExecCommands(bad); err == nil {
			t.Errorf("ParseExecCommands(%.60s…) accepted", bad)
		}
	}
}
