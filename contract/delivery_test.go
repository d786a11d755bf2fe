package contract

import (
	"slices"
	"strings"
	"testing"
)

func TestSplitEnv(t *testing.T) {
	d := ContainerDelivery{
		Literal: []string{"MODE", "APP_PORT"},
		Env:     []string{"DB_PASSWORD", "POD_NAME"},
		EnvFrom: []string{"CFG_"},
	}
	for _, tc := range []struct {
		kv       string
		measured bool
	}{
		{"MODE=prod", true},                         // value:
		{"APP_PORT=8080", true},                     // literal wins over the service-link pattern
		{"PATH=/usr/bin", true},                     // image env
		{"DB_PASSWORD=s3cret", false},               // valueFrom secretKeyRef
		{"POD_NAME=web-7d9f-abcde", false},          // valueFrom fieldRef
		{"CFG_LEVEL=debug", false},                  // envFrom with prefix
		{"HOSTNAME=web-7d9f-abcde", false},          // containerd
		{"KUBERNETES_SERVICE_HOST=10.0.0.1", false}, // service links
		{"KUBERNETES_PORT_443_TCP_ADDR=10.0.0.1", false},
		{"REDIS_SERVICE_PORT_CLIENT=6379", false},
		{"NITROPOD_CPU_IDS=2,3", false}, // device plugin
		{"LD_PRELOAD=/evil.so", true},   // not a delivered source: measured (so it changes PCR0)
	} {
		m, dl := SplitEnv([]string{tc.kv}, d)
		if got := len(m) == 1; got != tc.measured || len(m)+len(dl) != 1 {
			t.Errorf("%s: measured %v delivered %v, want measured=%v", tc.kv, m, dl, tc.measured)
		}
	}
	// envFrom without prefix: every non-literal name is delivered.
	m, dl := SplitEnv([]string{"MODE=x", "PATH=/bin", "ANY=1"}, ContainerDelivery{Literal: []string{"MODE"}, EnvFrom: []string{""}})
	if !slices.Equal(m, []string{"MODE=x"}) || !slices.Equal(dl, []string{"PATH=/bin", "ANY=1"}) {
		t.Errorf("envFrom without prefix: measured %v delivered %v", m, dl)
	}
}

func TestPolicyRefusesUndeclared(t *testing.T) {
	d := ContainerDelivery{Literal: []string{"MODE"}, Env: []string{"DB_PASSWORD"}, EnvFrom: []string{"CFG_"},
		Mounts: []Mount{{Path: "/etc/app", Kind: VolumeConfigMap, Volume: "cfg"}}}
	p := PolicyFor(d)
	measured := map[string]bool{"MODE": true, "PATH": true}
	for _, ok := range []string{"DB_PASSWORD", "CFG_X", "HOSTNAME", "FOO_SERVICE_HOST", "NITROPOD_MEMORY_MIB"} {
		if err := p.CheckEnv(ok, measured); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"LD_PRELOAD", "MODE", "PATH", "CFG", "DB_PASSWORD2", ""} {
		err := p.CheckEnv(bad, measured)
		if err == nil {
			t.Errorf("%s allowed", bad)
		} else if bad != "" && !strings.Contains(err.Error(), bad) {
			t.Errorf("%s: message %q does not name it", bad, err)
		}
	}
	for _, ok := range []string{"/etc/app", "/etc/hosts", "/etc/resolv.conf"} {
		if err := p.CheckMount(ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"/etc/app/x", "/bin", "/etc/../etc/app", "relative"} {
		if err := p.CheckMount(bad); err == nil {
			t.Errorf("mount %s allowed", bad)
		}
	}
	if err := (DeliveryPolicy{Any: true}).CheckEnv("LD_PRELOAD", measured); err != nil {
		t.Errorf("debug policy: %v", err)
	}
	if err := PolicyFor(ContainerDelivery{EnvFrom: []string{""}}).CheckEnv("LD_PRELOAD", nil); err == nil {
		t.Error("LD_PRELOAD allowed under envFrom without prefix")
	}
	// The policy is a function of the template only.
	if !slices.Equal(PolicyFor(d).Env, p.Env) {
		t.Error("policy not deterministic")
	}
	// A prefix with a star is escaped, not a wildcard.
	sp := PolicyFor(ContainerDelivery{EnvFrom: []string{"A*"}})
	if sp.CheckEnv("AB", nil) == nil || sp.CheckEnv("A*B", nil) != nil {
		t.Error("envFrom prefix with * is treated as a pattern")
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"*_PORT", "FOO_PORT", true}, {"*_PORT", "_PORT", true}, {"*_PORT", "FOO_PORTS", false},
		{"*_PORT_*", "FOO_PORT_80_TCP", true}, {"*_PORT_*", "FOO_PORT", false},
		{"A*B*C", "AxxBxxC", true}, {"A*B*C", "AC", false}, {"ABC", "ABC", true}, {`A\*`, "A*", true}, {`A\*`, "AB", false},
		{"*", "", true},
	} {
		if got := Glob(tc.p, tc.s); got != tc.want {
			t.Errorf("Glob(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

func TestParseDelivery(t *testing.T) {
	m := map[string]ContainerDelivery{"app": {Literal: []string{"A"}, Mounts: []Mount{{Path: "/cfg", Kind: VolumeSecret, Volume: "s", ReadOnly: true}}}}
	got, err := ParseDelivery(MarshalDelivery(m))
	if err != nil || got["app"].Mounts[0].Path != "/cfg" {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for _, bad := range []string{
		`{"app":{"literal":["A=B"]}}`,
		`{"app":{"mounts":[{"path":"rel","kind":"secret"}]}}`,
		`{"app":{"mounts":[{"path":"/x","kind":"hostPath"}]}}`,
		`{"app":{"mounts":[{"path":"/x/../y","kind":"secret"}]}}`,
		`not json`,
		`{"app":{"literal":["` + strings.Repeat("A", MaxDeliveryAnnotationBytes) + `"]}}`,
	} {
		if _, err := ParseDelivery(bad); err == nil {
			t.Errorf("%.60s accepted", bad)
		}
	}
}
