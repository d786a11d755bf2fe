package shim_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
)

// TestStartWaitsForApp: the task's Start (here `ctr run -d`, which returns
// when Start does) returns only once init has started the app in the
// enclave: the launcher has logged "app started" at that moment, and the
// app's first output follows at once rather than a boot later.
func TestStartWaitsForApp(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	logPath := filepath.Join(t.TempDir(), "app.log")
	start := time.Now()
	e.runDetached(t, ctx, []string{"--log-uri", "file://" + logPath}, "started1", "sh", "-c", "echo marker-first-line; exec sleep 1000")
	returned := time.Since(start)
	defer e.remove(ctx, "started1")
	launcherLog, _ := os.ReadFile(filepath.Join(e.Ctrd.State, "io.containerd.runtime.v2.task", ns, "started1", "nitropod-launcher.log"))
	if !strings.Contains(string(launcherLog), "app started in enclave") {
		t.Fatalf("Start returned after %v, before the app started; launcher log:\n%s", returned, launcherLog)
	}
	if _, st := e.taskPid(t, ctx, "started1"); st != "RUNNING" {
		t.Errorf("task status %q right after Start, want RUNNING", st)
	}
	// The app's stdout travels enclave → launcher → containerd's log
	// writer; it is there well within a boot time (about 1.5 s) of Start.
	deadline := time.Now().Add(500 * time.Millisecond)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "marker-first-line") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the app's first line was not in its log 500ms after Start returned (%q)", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("ctr run -d returned after %v, with the app running", returned.Round(time.Millisecond))
}

// TestStartFailures: a command that does not exist in the image and an
// enclave too small to boot fail Start itself, with the reason in the
// error, and leave nothing running.
func TestStartFailures(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	for _, tc := range []struct {
		name, id  string
		memoryMiB int
		args      []string
		want      string
	}{
		{"missing command", "nocmd1", 0, []string{"/no/such/command"}, "/no/such/command"},
		{"enclave too small", "small1", 64, []string{"sh", "-c", "echo hi"}, "too small"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.memoryMiB != 0 {
				old := e.MemoryMiB()
				e.ConfigureMemory(t, tc.memoryMiB, "")
				defer e.ConfigureMemory(t, old, "")
			}
			full := append([]string{"run", "-d", "--runtime", nitropod.RuntimeType, busyboxRef, tc.id}, tc.args...)
			out, err := e.Ctrd.CtrCmd(ctx, ns, full...).CombinedOutput()
			defer e.remove(ctx, tc.id)
			if err == nil {
				t.Fatalf("ctr run -d succeeded; want Start to fail with %q: %s", tc.want, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("ctr run -d: %v: %s; want the error to say %q", err, out, tc.want)
			}
			t.Logf("start refused: %s", strings.TrimSpace(string(out)))
			e.AssertNothingLeft(t)
		})
	}
}
