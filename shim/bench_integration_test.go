package shim_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
)

// rssKiB is a process's resident set size.
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// runD is `ctr run -d` with the given runtime; it returns the wall time
// from the request to the started task (Create + Start; the enclave boots
// after Start returns, so VM boot is excluded).
func (e *env) runD(b testing.TB, ctx context.Context, runtime, id string, args ...string) time.Duration {
	b.Helper()
	full := append([]string{"run", "-d", "--runtime", runtime, busyboxRef, id}, args...)
	t0 := time.Now()
	if out, err := e.Ctrd.CtrCmd(ctx, ns, full...).CombinedOutput(); err != nil {
		b.Fatalf("ctr run -d %s: %v: %s", id, err, out)
	}
	return time.Since(t0)
}

// BenchmarkShim measures, in one run, the resident memory of
// containerd-shim-nitro-v1 + nitropod-launcher per running enclave
// container against containerd-shim-runc-v2 for a plain busybox container,
// and Create→Start latency on a cache hit (ctr run -d wall time, which
// excludes the VM boot) against runc. Run with -benchtime=1x.
func BenchmarkShim(b *testing.B) {
	e := newEnv(b, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	e.importImage(b, ctx, ns, busyboxRef, busyboxImage(b, ""))
	loop := []string{"sh", "-c", "while true; do sleep 1; done"}

	// Warm the cache (the build is not what is measured).
	e.runD(b, ctx, nitropod.RuntimeType, "warm", loop...)
	_, _ = e.Ctrd.Ctr(ctx, ns, "task", "kill", "-s", "SIGKILL", "warm")
	e.waitStatus(b, ctx, "warm", "STOPPED", time.Minute)
	e.remove(ctx, "warm")
	const n = 3
	var nitroLat, runcLat, shimCreate time.Duration
	var shimRSS, launcherRSS, runcRSS int
	for i := range n {
		nid, rid := fmt.Sprintf("nitro%d", i), fmt.Sprintf("runc%d", i)
		nitroLat += e.runD(b, ctx, nitropod.RuntimeType, nid, loop...)
		runcLat += e.runD(b, ctx, "io.containerd.runc.v2", rid, loop...)
		hit, build, d := e.createInfo(b, nid)
		if !hit || build {
			b.Fatalf("%s was not a cache hit", nid)
		}
		shimCreate += d
		// Measure once the app runs in the enclave (steady state).
		bundle := filepath.Join(e.Ctrd.State, "io.containerd.runtime.v2.task", ns, nid)
		deadline := time.Now().Add(3 * time.Minute)
		for {
			lb, _ := os.ReadFile(filepath.Join(bundle, "nitropod-launcher.log"))
			if strings.Contains(string(lb), "app started in enclave") {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s: app not started: %s", nid, lb)
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(time.Second)
		lp, _ := e.taskPid(b, ctx, nid)
		rp, _ := e.taskPid(b, ctx, rid)
		shimRSS += rssKiB(ppid(lp))
		launcherRSS += rssKiB(lp)
		runcRSS += rssKiB(ppid(rp))
		for _, id := range []string{nid, rid} {
			_, _ = e.Ctrd.Ctr(ctx, ns, "task", "kill", "-s", "SIGKILL", id)
			e.waitStatus(b, ctx, id, "STOPPED", time.Minute)
			e.remove(ctx, id)
		}
	}
	nitroRSS := float64(shimRSS+launcherRSS) / n
	b.ReportMetric(float64(shimRSS)/n, "shim-rss-KiB")
	b.ReportMetric(float64(launcherRSS)/n, "launcher-rss-KiB")
	b.ReportMetric(float64(runcRSS)/n, "runc-shim-rss-KiB")
	b.ReportMetric(nitroRSS/(float64(runcRSS)/n), "rss-ratio")
	b.ReportMetric(float64(nitroLat.Milliseconds())/n, "nitro-create-start-ms")
	b.ReportMetric(float64(runcLat.Milliseconds())/n, "runc-create-start-ms")
	b.ReportMetric(float64(shimCreate.Microseconds())/1000/n, "shim-create-rpc-ms")
}
