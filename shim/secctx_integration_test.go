package shim_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// probeScript reports, one key=value per line, what the app may do inside
// its enclave.
var probeScript = strings.Join([]string{
	`grep -E '^(CapEff|CapBnd|NoNewPrivs|Groups|Seccomp):' /proc/self/status`,
	`touch /probe 2>/dev/null && echo rootfs=rw || echo rootfs=ro`,
	`echo "unshare=$(unshare -U true 2>&1 && echo ok)"`,
	`echo "version=$(cat /proc/version 2>/dev/null | wc -c)"`,
	`echo "syskernel=$(ls /sys/kernel 2>/dev/null | wc -l)"`,
	`echo "sysctl=$(cat /proc/sys/kernel/shm_rmid_forced)"`,
	`(echo 0 > /proc/sys/kernel/shm_rmid_forced) 2>/dev/null && echo procsys=rw || echo procsys=ro`,
	`echo probe-done`,
}, "; ")

// probe runs probeScript in a new container of pod and returns its report.
func (c *criEnv) probe(t *testing.T, ctx context.Context, pod criPod, name string, linux map[string]any) map[string]string {
	t.Helper()
	id := c.createContainer(t, ctx, pod, name, []string{"sh", "-c", probeScript}, linux)
	if _, err := c.cc.run(ctx, "start", id); err != nil {
		t.Fatal(err)
	}
	code, _ := c.waitExited(t, ctx, id, 4*time.Minute)
	logs, err := c.cc.run(ctx, "logs", id)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s (exit %s):\n%s", name, code, logs)
	if !strings.Contains(logs, "probe-done") {
		t.Fatalf("%s did not finish its probe", name)
	}
	out := map[string]string{}
	for _, l := range strings.Split(logs, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			out[k] = strings.TrimSpace(v)
		} else if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	for _, args := range [][]string{{"rm", id}} {
		if _, err := c.cc.run(ctx, args...); err != nil {
			t.Errorf("crictl %v: %v", args, err)
		}
	}
	return out
}

// TestCRISecurityContext runs the same probe in an enclave container with
// a restricted security context and in one without: the restricted one
// cannot write its root filesystem, has only the capability it kept, runs
// with no_new_privs and a RuntimeDefault seccomp filter (unshare is
// refused with EPERM), sees masked paths empty and readonly paths
// read-only; the Pod's sysctl and supplemental group apply in both.
func TestCRISecurityContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c := newCRIEnv(t, ctx)
	pod := c.runPod(t, ctx, "secctx", map[string]any{
		"sysctls":          map[string]string{"kernel.shm_rmid_forced": "1"},
		"security_context": map[string]any{"supplemental_groups": []int{1234}},
	})
	locked := c.probe(t, ctx, pod, "locked", map[string]any{"security_context": map[string]any{
		"supplemental_groups": []int{1234},
		"readonly_rootfs":     true,
		"no_new_privs":        true,
		"capabilities":        map[string]any{"drop_capabilities": []string{"ALL"}, "add_capabilities": []string{"NET_BIND_SERVICE"}},
		"seccomp":             map[string]any{"profile_type": 0}, // RuntimeDefault
		"masked_paths":        []string{"/proc/version", "/sys/kernel"},
		"readonly_paths":      []string{"/proc/sys"},
	}})
	// kubelet copies the Pod's supplementalGroups into every container's
	// security context; sysctls reach only the sandbox's spec.
	plain := c.probe(t, ctx, pod, "plain", map[string]any{"security_context": map[string]any{"supplemental_groups": []int{1234}}})

	for _, chk := range []struct {
		key, locked, plain string
	}{
		{"rootfs", "ro", "rw"},
		{"NoNewPrivs", "1", "0"},
		{"CapEff", "0000000000000400", ""}, // CAP_NET_BIND_SERVICE only
		{"CapBnd", "0000000000000400", ""},
		{"Seccomp", "2", "0"},
		{"syskernel", "0", ""},
		{"version", "0", ""},
		{"procsys", "ro", ""},
		{"sysctl", "1", "1"},
	} {
		if got := locked[chk.key]; got != chk.locked {
			t.Errorf("restricted container: %s = %q, want %q", chk.key, got, chk.locked)
		}
		if chk.plain != "" && plain[chk.key] != chk.plain {
			t.Errorf("plain container: %s = %q, want %q", chk.key, plain[chk.key], chk.plain)
		}
	}
	// The plain container keeps containerd's default capabilities and
	// unmasked paths (the checks above can fail).
	if plain["CapEff"] == "" || plain["CapEff"] == locked["CapEff"] || plain["version"] == "0" || plain["syskernel"] == "0" {
		t.Errorf("plain container: CapEff %q version %q syskernel %q, want default capabilities and unmasked paths", plain["CapEff"], plain["version"], plain["syskernel"])
	}
	// seccomp: unshare is refused by the filter (EPERM), not by the kernel.
	if !strings.Contains(locked["unshare"], "Operation not permitted") {
		t.Errorf("restricted container: unshare -U gave %q, want Operation not permitted", locked["unshare"])
	}
	if strings.Contains(plain["unshare"], "Operation not permitted") {
		t.Errorf("plain container: unshare -U gave %q: EPERM without a seccomp filter", plain["unshare"])
	}
	for name, r := range map[string]map[string]string{"restricted": locked, "plain": plain} {
		if !strings.Contains(" "+r["Groups"]+" ", " 1234 ") {
			t.Errorf("%s container: Groups %q lack the supplemental group 1234", name, r["Groups"])
		}
	}
}

// TestCRIEnclaveOOM runs an app that allocates past its enclave's memory:
// the enclave kernel's OOM killer ends it, and CRI reports the reason
// OOMKilled with exit code 137.
func TestCRIEnclaveOOM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := newCRIEnv(t, ctx)
	pod := c.runPod(t, ctx, "oom", nil)
	id := c.createContainer(t, ctx, pod, "hog", []string{"sh", "-c", "echo hog-start; exec tail /dev/zero"}, nil)
	if _, err := c.cc.run(ctx, "start", id); err != nil {
		t.Fatal(err)
	}
	code, reason := c.waitExited(t, ctx, id, 5*time.Minute)
	if code != "137" || reason != "OOMKilled" {
		logs, _ := c.cc.run(ctx, "logs", id)
		t.Errorf("exit code %s reason %q, want 137 OOMKilled; log:\n%s", code, reason, logs)
	}
	for _, args := range [][]string{{"rm", id}, {"stopp", pod.id}, {"rmp", pod.id}} {
		if _, err := c.cc.run(ctx, args...); err != nil {
			t.Errorf("crictl %v: %v", args, err)
		}
	}
}
