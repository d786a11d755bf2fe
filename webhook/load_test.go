package webhook

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The load benchmark runs each server in a child process (this test binary,
// re-executed) so that its RSS is its own: the real handler, and a null
// handler that answers a constant AdmissionReview, both behind Run's TLS
// stack. A Go load generator sends AdmissionReviews at a fixed offered rate.
const (
	benchServerEnv = "NITROPOD_WEBHOOK_BENCH_SERVER" // "webhook" or "null": be the server
	benchAddrEnv   = "NITROPOD_WEBHOOK_BENCH_ADDR"
	benchCertEnv   = "NITROPOD_WEBHOOK_BENCH_CERT"
	benchKeyEnv    = "NITROPOD_WEBHOOK_BENCH_KEY"
)

func TestMain(m *testing.M) {
	if kind := os.Getenv(benchServerEnv); kind != "" {
		os.Exit(benchServer(kind))
	}
	os.Exit(m.Run())
}

var nullAnswer = []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}`)

func benchServer(kind string) int {
	opts := Options{
		Listen:      os.Getenv(benchAddrEnv),
		TLSCertFile: os.Getenv(benchCertEnv),
		TLSKeyFile:  os.Getenv(benchKeyEnv),
	}
	if kind == "null" {
		opts.admission = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(nullAnswer)
		})
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, opts, nil); err != nil {
		fmt.Fprintln(os.Stderr, "bench server:", err)
		return 1
	}
	return 0
}

type loadResult struct {
	name          string
	sent, errors  int
	p50, p99, max time.Duration
	throughput    float64 // answered requests per second
	rssMiB        float64 // peak VmRSS sampled during the load
	hwmMiB        float64 // VmHWM at the end
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkWebhookLoad measures latency and throughput over TLS on loopback
// at a fixed offered rate (NITROPOD_BENCH_RATE requests/s, default 500) for
// the null handler and the webhook in the same run: both servers stay up and
// take turns in NITROPOD_BENCH_ROUNDS rounds (default 10) of
// NITROPOD_BENCH_ROUND_SECONDS (default 1) each, so that noise from other
// work on the machine falls on both alike. Run it once: -benchtime 1x
// (hack/bench-webhook.sh).
func BenchmarkWebhookLoad(b *testing.B) {
	rate := envInt("NITROPOD_BENCH_RATE", 500)
	rounds := envInt("NITROPOD_BENCH_ROUNDS", 10)
	roundDur := time.Duration(envInt("NITROPOD_BENCH_ROUND_SECONDS", 1)) * time.Second
	pod := readPod(b, filepath.Join("testdata", "golden", "nginx-example.in.yaml"))
	body := reviewFor(b, pod)
	kinds := []string{"null", "webhook"}
	servers := map[string]*benchTarget{}
	for _, kind := range kinds {
		servers[kind] = startBenchServer(b, kind, body)
	}
	for _, kind := range kinds { // warm-up: connections, TLS sessions, caches
		_, _, _ = fire(rate, time.Second, servers[kind].send)
	}
	var roundRatios []float64
	for i := 0; i < b.N*rounds; i++ {
		var p99 [2]time.Duration
		for k, kind := range kinds {
			p99[k] = servers[kind].measure(rate, roundDur)
		}
		if p99[0] > 0 {
			roundRatios = append(roundRatios, float64(p99[1])/float64(p99[0]))
		}
	}
	sort.Float64s(roundRatios)
	fmt.Printf("\noffered load %d req/s, %d rounds of %s per handler taking turns, AdmissionReview of %d bytes (the document's nginx Pod), HTTP/2 over TLS 1.3 on loopback\n",
		rate, rounds*b.N, roundDur, len(body))
	fmt.Printf("%-8s %8s %7s %10s %10s %10s %12s %9s %9s\n", "handler", "sent", "errors", "p50", "p99", "max", "throughput", "RSS MiB", "HWM MiB")
	res := map[string]loadResult{}
	for _, kind := range kinds {
		r := servers[kind].result()
		res[kind] = r
		fmt.Printf("%-8s %8d %7d %10s %10s %10s %10.1f/s %9.1f %9.1f\n", r.name, r.sent, r.errors,
			r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.max.Round(time.Microsecond), r.throughput, r.rssMiB, r.hwmMiB)
		if servers[kind].firstErr != nil {
			fmt.Printf("%s: first error: %v\n", kind, servers[kind].firstErr)
		}
	}
	n, w := res["null"], res["webhook"]
	ratio := float64(w.p99) / float64(n.p99)
	medianRatio := 0.0
	if len(roundRatios) > 0 {
		medianRatio = roundRatios[len(roundRatios)/2]
	}
	fmt.Printf("p99 webhook / null = %.2f over all rounds, median of per-round ratios %.2f (target <= 1.5), errors %d\n",
		ratio, medianRatio, n.errors+w.errors)
	b.ReportMetric(float64(w.p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(w.p99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(n.p50.Microseconds()), "null-p50-µs")
	b.ReportMetric(float64(n.p99.Microseconds()), "null-p99-µs")
	b.ReportMetric(ratio, "p99-ratio")
	b.ReportMetric(medianRatio, "p99-ratio-median-round")
	b.ReportMetric(w.throughput, "req/s")
	b.ReportMetric(float64(w.errors), "errors")
	b.ReportMetric(w.rssMiB, "RSS-MiB")
}

// benchTarget is one server process under load and what was measured.
type benchTarget struct {
	kind     string
	pid      int
	send     func() error
	lat      []time.Duration
	errs     int
	firstErr error
	busy     time.Duration
	peakRSS  float64
}

func startBenchServer(b *testing.B, kind string, body []byte) *benchTarget {
	b.Helper()
	dir := b.TempDir()
	certs, err := GenerateCerts([]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := certs.WriteFiles(cert, key, ""); err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchServerEnv+"="+kind, benchAddrEnv+"="+addr, benchCertEnv+"="+cert, benchKeyEnv+"="+key)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	client := clientFor(b, certs.CAPEM)
	// HTTP/2 over one connection, as kube-apiserver's webhook client does.
	client.Transport.(*http.Transport).ForceAttemptHTTP2 = true
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := client.Get("https://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s server not ready: %v", kind, err)
		}
	}
	url := "https://" + addr + MutatePath
	t := &benchTarget{kind: kind, pid: cmd.Process.Pid}
	t.send = func() error {
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.ProtoMajor != 2 {
			return fmt.Errorf("protocol %s, want HTTP/2", resp.Proto)
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(out, []byte(`"allowed":true`)) {
			return fmt.Errorf("status %d: %.200s", resp.StatusCode, out)
		}
		return nil
	}
	return t
}

// measure runs one round of load, samples the server's RSS meanwhile and
// returns the round's p99.
func (t *benchTarget) measure(rate int, d time.Duration) time.Duration {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, _ := procStatusMiB(t.pid); rss > t.peakRSS {
				t.peakRSS = rss
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	lat, errs, firstErr := fire(rate, d, t.send)
	t.busy += time.Since(start)
	close(stop)
	wg.Wait()
	t.lat = append(t.lat, lat...)
	t.errs += errs
	if t.firstErr == nil {
		t.firstErr = firstErr
	}
	if len(lat) == 0 {
		return 0
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[min(len(lat)-1, len(lat)*99/100)]
}

func (t *benchTarget) result() loadResult {
	lat := append([]time.Duration(nil), t.lat...)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	_, hwm := procStatusMiB(t.pid)
	r := loadResult{name: t.kind, sent: len(lat) + t.errs, errors: t.errs, p50: q(0.50), p99: q(0.99),
		throughput: float64(len(lat)) / t.busy.Seconds(), rssMiB: t.peakRSS, hwmMiB: hwm}
	if len(lat) > 0 {
		r.max = lat[len(lat)-1]
	}
	return r
}

// fire sends at a fixed rate for d, open loop: each request starts at its
// scheduled time whatever the others do, and its latency counts from that
// time, so a slow server cannot hide queueing (no coordinated omission).
func fire(rate int, d time.Duration, send func() error) (lat []time.Duration, errs int, firstErr error) {
	n := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		at := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(at))
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := send()
			took := time.Since(at)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			lat = append(lat, took)
		}()
	}
	wg.Wait()
	return lat, errs, firstErr
}

// procStatusMiB reads VmRSS and VmHWM of a process.
func procStatusMiB(pid int) (rss, hwm float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}
