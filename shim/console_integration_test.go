package shim_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/shim/launcher"
)

// TestDebugConsoleFloodCapped: a debug enclave whose app floods the kernel
// console (2.5 MB) leaves at most launcher.MaxLogBytes in the bundle (on
// /run, a tmpfs), and the log's tail is the newest console output.
func TestDebugConsoleFloodCapped(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	const id = "flood"
	bundle := filepath.Join(e.Ctrd.State, "io.containerd.runtime.v2.task", ns, id)
	logPath := filepath.Join(bundle, launcher.LogFile)
	script := `i=0; while [ $i -lt 25 ]; do head -c 100000 /dev/zero | tr '\0' x > /dev/console; i=$((i+1)); done; echo; echo FLOOD-END > /dev/console; echo flooded; sleep 6`
	cmd := e.run(ctx, []string{"--env", nitropod.DebugModeEnv + "=" + nitropod.DebugModeValue}, busyboxRef, id, "sh", "-c", script)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var maxSeen int64
	sawEnd := false
	for !sawEnd {
		select {
		case err := <-done:
			t.Fatalf("ctr run ended before the flood was seen in the log (%v):\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		var total int64
		for _, p := range []string{logPath, logPath + ".1"} {
			if fi, err := os.Stat(p); err == nil {
				total += fi.Size()
			}
		}
		maxSeen = max(maxSeen, total)
		if total > launcher.MaxLogBytes {
			t.Fatalf("the bundle's launcher log holds %d bytes, more than %d", total, launcher.MaxLogBytes)
		}
		if tail, err := launcher.ReadLogTail(logPath, 4096); err == nil && strings.Contains(string(tail), "FLOOD-END") {
			sawEnd = true
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "flooded") {
		t.Errorf("app output %q lacks its last line", out.String())
	}
	if maxSeen < launcher.MaxLogBytes/2 {
		t.Errorf("the log never grew past %d bytes: the console did not reach it", maxSeen)
	}
	t.Logf("largest log seen: %d bytes (cap %d)", maxSeen, launcher.MaxLogBytes)
}
