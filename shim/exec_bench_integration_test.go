package shim_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	nitropod "github.com/nitropod/nitropod"
)

// BenchmarkExec measures, in one run, the round trip of `ctr task exec …
// true` (containerd's task API: Exec, Start, Wait, Delete) into a debug
// enclave container against the same into a runc container, and splits
// the enclave's time into the part inside the agent channel (the launcher's
// request to init until the exit status: the guest's work under TCG,
// fork/exec of `true` included) and the host-side rest (ctr, containerd,
// shim, launcher socket). Run with -benchtime=1x; BENCH_EXEC_N sets the
// number of execs per runtime (default 30).
func BenchmarkExec(b *testing.B) {
	n := 30
	if s := os.Getenv("BENCH_EXEC_N"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 || n > 1000 {
			b.Fatalf("BENCH_EXEC_N=%q: want 1..1000", s)
		}
	}
	e := newEnv(b, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e.importImage(b, ctx, ns, busyboxRef, busyboxImage(b, ""))
	loop := []string{"sh", "-c", "while true; do sleep 1; done"}
	e.killOnCleanup(b, "benchexec")
	e.killOnCleanup(b, "benchrunc")
	full := append([]string{"run", "-d", "--runtime", nitropod.RuntimeType, "--env", nitropod.DebugModeEnv + "=" + nitropod.DebugModeValue}, ctrCPUFlags()...)
	full = append(full, busyboxRef, "benchexec")
	if out, err := e.Ctrd.CtrCmd(ctx, ns, append(full, loop...)...).CombinedOutput(); err != nil {
		b.Fatalf("ctr run enclave: %v: %s", err, out)
	}
	e.runD(b, ctx, "io.containerd.runc.v2", "benchrunc", loop...)
	measure := func(id string) []time.Duration {
		var ds []time.Duration
		for i := 0; i < n+2; i++ {
			t0 := time.Now()
			if out, err := e.Ctrd.CtrCmd(ctx, ns, "task", "exec", "--exec-id", fmt.Sprintf("b%d", i), id, "true").CombinedOutput(); err != nil {
				b.Fatalf("ctr task exec %s true: %v: %s", id, err, out)
			}
			if i >= 2 { // two warm-ups
				ds = append(ds, time.Since(t0))
			}
		}
		slices.Sort(ds)
		return ds
	}
	b.ResetTimer()
	enc := measure("benchexec")
	runc := measure("benchrunc")
	b.StopTimer()

	logb, err := os.ReadFile(filepath.Join(e.Ctrd.State, "io.containerd.runtime.v2.task", ns, "benchexec", "nitropod-launcher.log"))
	if err != nil {
		b.Fatal(err)
	}
	var inside []time.Duration
	for i, m := range regexp.MustCompile(`exec b(\d+) exited: code 0 signal 0; (\d+)us in the enclave`).FindAllStringSubmatch(string(logb), -1) {
		if k, _ := strconv.Atoi(m[1]); k >= 2 && i < n+2 {
			us, _ := strconv.Atoi(m[2])
			inside = append(inside, time.Duration(us)*time.Microsecond)
		}
	}
	if len(inside) != n {
		b.Fatalf("found %d exec timings in the launcher log, want %d", len(inside), n)
	}
	slices.Sort(inside)
	med := func(ds []time.Duration) time.Duration { return ds[len(ds)/2] }
	p90 := func(ds []time.Duration) time.Duration { return ds[len(ds)*9/10] }
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	fmt.Printf("bench-exec: %d execs of `true` per runtime, ctr task exec wall time\n", n)
	fmt.Printf("  runc container            median %7.1f ms   p90 %7.1f ms\n", ms(med(runc)), ms(p90(runc)))
	fmt.Printf("  debug enclave (TCG)       median %7.1f ms   p90 %7.1f ms   ratio to runc %.2f\n", ms(med(enc)), ms(p90(enc)), float64(med(enc))/float64(med(runc)))
	fmt.Printf("    inside the agent channel median %7.1f ms   p90 %7.1f ms   (launcher request -> init -> exit status)\n", ms(med(inside)), ms(p90(inside)))
	fmt.Printf("    host side (rest)         median %7.1f ms\n", ms(med(enc)-med(inside)))
	b.ReportMetric(ms(med(enc)), "enclave-ms")
	b.ReportMetric(ms(med(runc)), "runc-ms")
	b.ReportMetric(ms(med(inside)), "in-channel-ms")
}
