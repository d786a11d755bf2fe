package initproc

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	ctrseccomp "github.com/containerd/containerd/contrib/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/eif/ramdisk"

	"github.com/nitropod/nitropod/internal/testenv"
)

const execStageEnv = "NITROPOD_TEST_EXEC_STAGE"

func TestMain(m *testing.M) {
	if os.Getenv(execStageEnv) == "1" {
		os.Exit(execStage())
	}
	os.Exit(m.Run())
}

// runExecStage runs the exec stage (this test binary) for req, as init
// does, and returns the app's output and the stage's error message.
func runExecStage(t *testing.T, req execRequest) (string, string) {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	reqR, reqW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = []string{execStageEnv + "=1"}
	cmd.ExtraFiles = []*os.File{reqR, errW}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reqR.Close()
	errW.Close()
	if _, err := reqW.Write(b); err != nil {
		t.Fatal(err)
	}
	reqW.Close()
	var msg bytes.Buffer
	_, _ = msg.ReadFrom(errR)
	_ = cmd.Wait()
	return out.String(), msg.String()
}

func statusField(out, key string) string {
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestExecStage applies a restricted context on this (host) kernel: the
// app runs with only the kept capability, no_new_privs and the
// RuntimeDefault filter, which refuses unshare; without a context the app
// keeps root's capabilities and no filter.
func TestExecStage(t *testing.T) {
	// The exec stage changes credentials: root is required, and in CI
	// (NITROPOD_REQUIRE_INTEGRATION=1) its absence fails the test.
	testenv.RequireRoot(t)
	sh := testenv.Binary(t, "sh")
	script := "grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Uid|Groups):' /proc/self/status; unshare -U true 2>&1 || echo unshare-failed"
	caps := []string{"CAP_NET_BIND_SERVICE"}
	out, msg := runExecStage(t, execRequest{
		Path: sh, Args: []string{"sh", "-c", script}, Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		UID: 1000, GID: 1000, Groups: []uint32{1234},
		Security: &ramdisk.Security{
			Capabilities:    &ramdisk.Capabilities{Bounding: caps, Effective: caps, Permitted: caps, Inheritable: caps, Ambient: caps},
			NoNewPrivileges: true,
			Seccomp:         ctrseccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}),
		},
	})
	if msg != "" {
		t.Fatalf("exec stage failed: %s\n%s", msg, out)
	}
	t.Logf("restricted:\n%s", out)
	for k, want := range map[string]string{
		"CapEff": "0000000000000400", "CapBnd": "0000000000000400", "CapAmb": "0000000000000400",
		"NoNewPrivs": "1", "Seccomp": "2", "Groups": "1234",
	} {
		if got := statusField(out, k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if f := strings.Fields(statusField(out, "Uid")); len(f) != 4 || f[0] != "1000" || f[1] != "1000" || f[2] != "1000" {
		t.Errorf("Uid = %v, want 1000 for real, effective and saved", f)
	}
	if !strings.Contains(out, "Operation not permitted") {
		t.Errorf("unshare under RuntimeDefault did not fail with EPERM:\n%s", out)
	}

	// Root without a filter keeps its capabilities (the setting is what
	// restricts, not the exec stage).
	out, msg = runExecStage(t, execRequest{Path: sh, Args: []string{"sh", "-c", script}, Env: []string{"PATH=/usr/bin:/bin"},
		Security: &ramdisk.Security{ReadonlyRootfs: true}})
	if msg != "" {
		t.Fatalf("exec stage failed: %s", msg)
	}
	if statusField(out, "NoNewPrivs") != "0" || statusField(out, "Seccomp") != "0" || statusField(out, "CapEff") == "0000000000000400" {
		t.Errorf("unrestricted:\n%s", out)
	}

	// A context that cannot be applied is reported on the error pipe.
	_, msg = runExecStage(t, execRequest{Path: sh, Args: []string{"sh"}, Security: &ramdisk.Security{
		Capabilities: &ramdisk.Capabilities{Bounding: []string{"CAP_NOPE"}}}})
	if !strings.Contains(msg, "unknown capability") {
		t.Errorf("bad capability: %q", msg)
	}
	_, msg = runExecStage(t, execRequest{Path: "/nonexistent/app", Args: []string{"app"}, Security: &ramdisk.Security{NoNewPrivileges: true}})
	if msg != "no such file or directory" {
		t.Errorf("missing command: %q", msg)
	}
}
