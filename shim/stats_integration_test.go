package shim_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/internal/shimtest"
	"github.com/nitropod/nitropod/shim/launcher"
)

// enclaveMetrics is what `ctr task metrics --format json` prints, for
// either cgroup version (the shim answers in the node's).
type enclaveMetrics struct {
	CPU struct {
		Usage *struct {
			Total uint64 `json:"total"`
		} `json:"usage"` // v1
		UsageUsec uint64 `json:"usage_usec"` // v2
	} `json:"cpu"`
	Memory struct {
		Usage json.RawMessage `json:"usage"` // v1: {usage, limit}; v2: a number
		// v2
		UsageLimit   uint64 `json:"usage_limit"`
		InactiveFile uint64 `json:"inactive_file"`
		// v1
		TotalInactiveFile uint64 `json:"total_inactive_file"`
	} `json:"memory"`
}

// cpuNs, usage, limit and workingSet read either version's figures the
// way containerd's CRI does.
func (m enclaveMetrics) cpuNs() uint64 {
	if m.CPU.Usage != nil {
		return m.CPU.Usage.Total
	}
	return m.CPU.UsageUsec * 1000
}

func (m enclaveMetrics) usage() (usage, limit, workingSet uint64) {
	var v1 struct{ Usage, Limit uint64 }
	if json.Unmarshal(m.Memory.Usage, &v1) == nil && v1.Limit > 0 {
		usage, limit = v1.Usage, v1.Limit
		return usage, limit, usage - min(usage, m.Memory.TotalInactiveFile)
	}
	_ = json.Unmarshal(m.Memory.Usage, &usage)
	return usage, m.Memory.UsageLimit, usage - min(usage, m.Memory.InactiveFile)
}

func (e *env) metrics(ctx context.Context, t *testing.T, id string) enclaveMetrics {
	t.Helper()
	out, err := e.Ctrd.Ctr(ctx, ns, "task", "metrics", "--format", "json", id)
	if err != nil {
		t.Fatalf("ctr task metrics %s: %v: %s", id, err, out)
	}
	var m enclaveMetrics
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("decoding metrics %q: %v", out, err)
	}
	return m
}

// TestEnclaveStatsAndClock runs one enclave app for about a minute and
// checks, through containerd's own APIs:
//   - stats: `ctr task metrics` reports the enclave's memory (its limit is
//     the enclave's size, not the launcher cgroup's) and CPU, and both rise
//     when the app fills 64 MiB of its tmpfs and spins;
//   - clock: the app sets its clock 25 years back; init steps it back to
//     the host's within a sync interval, and from then on every reading
//     the app prints is within 100 ms of the host's clock when it arrives.
func TestEnclaveStatsAndClock(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))

	// After "wrong", each line the test writes is answered with a clock
	// reading, so the test knows the window the reading was taken in.
	const script = `
echo ready
# Set the clock 25 years back until a file's time proves it was (the host
# may correct it between two commands).
touch /tmp/a
until [ "$(stat -c %Y /tmp/a)" -lt 1500000000 ]; do date -s @1000000000 >/dev/null; touch /tmp/a; done
echo "wrong $(stat -c %Y /tmp/a)"
(sleep 6; dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>/dev/null; echo filled; end=$(($(date +%s) + 14)); echo "spinning until $end"; while [ "$(date +%s)" -lt $end ]; do :; done; echo spun) &
while read -r ping; do
  [ "$ping" = end ] && exit 0
  touch /tmp/t; echo "clock $ping $(stat -c %y /tmp/t)"
done
`
	cmd := e.run(ctx, []string{"--cap-add", "CAP_SYS_TIME"}, busyboxRef, "statsclock", "sh", "-c", script)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	type line struct {
		text string
		at   time.Time
	}
	lines := make(chan line, 200)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- line{sc.Text(), time.Now()}
		}
	}()
	next := func(prefix string, timeout time.Duration) line {
		t.Helper()
		deadline := time.After(timeout)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("output ended before %q", prefix)
				}
				if strings.HasPrefix(l.text, prefix) {
					return l
				}
			case <-deadline:
				t.Fatalf("no %q line within %v", prefix, timeout)
			}
		}
	}
	next("ready", 4*time.Minute)
	wrong := next("wrong ", time.Minute)
	t.Logf("the app set its clock to %s", wrong.text)

	// Stats before the fill: the enclave's figures within a few seconds.
	var before enclaveMetrics
	enclaveBytes := uint64(shimtest.DefaultMemoryMiB) << 20
	for i := 0; ; i++ {
		before = e.metrics(ctx, t, "statsclock")
		if _, limit, _ := before.usage(); limit > enclaveBytes/2 && limit <= enclaveBytes {
			break
		}
		if i == 20 {
			u, l, _ := before.usage()
			t.Fatalf("metrics never showed the enclave's memory (usage %d, limit %d; want a limit within the enclave's %d MiB)", u, l, shimtest.DefaultMemoryMiB)
		}
		time.Sleep(500 * time.Millisecond)
	}
	u0, _, ws0 := before.usage()
	t.Logf("before: cpu %v, memory usage %d MiB, working set %d MiB", time.Duration(before.cpuNs()), u0>>20, ws0>>20)
	if ws0 == 0 || before.cpuNs() == 0 {
		t.Errorf("enclave stats before the fill: working set %d, cpu %d, want both > 0", ws0, before.cpuNs())
	}

	// Clock: the test pings once a second; the app answers with its clock
	// reading, which must lie in the window between the ping's sending and
	// the answer's arrival, widened by 100 ms. From one sync interval (5 s)
	// after the app set its clock wrong, every reading must.
	var worst, widest time.Duration
	var clockLines, seq int
	sent := map[int]time.Time{}
	ping := func() {
		seq++
		sent[seq] = time.Now()
		if _, err := fmt.Fprintf(stdin, "%d\n", seq); err != nil {
			t.Errorf("pinging the app: %v", err)
		}
	}
	// collect checks clock answers until the deadline, or until a line
	// equal to prefix arrives (then it reports true).
	collect := func(until time.Time, prefix string) bool {
		ping()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for time.Now().Before(until) {
			var l line
			var ok bool
			select {
			case l, ok = <-lines:
			case <-tick.C:
				ping()
				continue
			case <-time.After(time.Until(until)):
				return false
			}
			if !ok {
				return false
			}
			if l.text == prefix {
				return true
			}
			v, isClock := strings.CutPrefix(l.text, "clock ")
			if !isClock {
				t.Logf("app: %s", l.text)
				continue
			}
			n, reading, _ := strings.Cut(v, " ")
			k, _ := strconv.Atoi(n)
			from, known := sent[k]
			if !known {
				t.Errorf("answer %q to an unknown ping", l.text)
				continue
			}
			if from.Before(wrong.at.Add(6 * time.Second)) {
				continue
			}
			guest, err := time.Parse("2006-01-02 15:04:05.999999999 -0700", reading)
			if err != nil {
				t.Errorf("clock line %q: %v", l.text, err)
				continue
			}
			clockLines++
			widest = max(widest, l.at.Sub(from))
			var off time.Duration
			switch {
			case guest.Before(from):
				off = from.Sub(guest)
			case guest.After(l.at):
				off = guest.Sub(l.at)
			}
			worst = max(worst, off)
			if off > 100*time.Millisecond {
				t.Errorf("%v after the app set it wrong, the enclave clock read %s for a ping sent at %s and answered at %s: %v outside that window, want ≤ 100 ms",
					from.Sub(wrong.at).Round(time.Millisecond), guest.Format(time.StampMicro), from.Format(time.StampMicro), l.at.Format(time.StampMicro), off)
			}
		}
		return false
	}
	if !collect(time.Now().Add(30*time.Second), "filled") {
		t.Fatal(`no "filled" line: the app's memory fill did not run`)
	}
	// Stats after the fill: 64 MiB more in use (tmpfs pages are not
	// reclaimable file cache), and CPU rising at about a CPU's rate.
	var after enclaveMetrics
	c0 := e.metrics(ctx, t, "statsclock").cpuNs()
	t0 := time.Now()
	for i := 0; ; i++ {
		collect(time.Now().Add(time.Second), "")
		after = e.metrics(ctx, t, "statsclock")
		_, _, ws1 := after.usage()
		if ws1 >= ws0+56<<20 && time.Since(t0) > 6*time.Second {
			break
		}
		if i == 20 {
			t.Fatalf("working set %d MiB after a 64 MiB fill, before %d MiB", ws1>>20, ws0>>20)
		}
	}
	if b, err := os.ReadFile(filepath.Join(e.Ctrd.State, "io.containerd.runtime.v2.task", ns, "statsclock", launcher.StatsFile)); err == nil {
		t.Logf("stats file at %v: %s", time.Now().Format(time.StampMicro), b)
	}
	u1, _, ws1 := after.usage()
	busy := time.Duration(after.cpuNs() - c0)
	wall := time.Since(t0)
	t.Logf("after: memory usage %d MiB, working set %d MiB; cpu %v in %v of a spinning app", u1>>20, ws1>>20, busy.Round(time.Millisecond), wall.Round(time.Millisecond))
	if busy < wall/3 {
		t.Errorf("the enclave's CPU use rose by %v in %v while its app spun, want at least a third of a CPU", busy, wall)
	}
	// The rest of the minute: the clock stays with the host's.
	collect(wrong.at.Add(70*time.Second), "never")
	if _, err := fmt.Fprintln(stdin, "end"); err != nil {
		t.Errorf("ending the app: %v", err)
	}
	if clockLines < 30 {
		t.Errorf("%d clock readings after the correction, want at least 30", clockLines)
	}
	t.Logf("clock: %d readings, worst %v outside the ping window (widest window %v)", clockLines, worst, widest)
	if err := cmd.Wait(); err != nil {
		t.Errorf("ctr run: %v", err)
	}
}
