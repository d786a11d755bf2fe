package initproc

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nitropod/nitropod/enclave/agent"
)

func TestParseProcStat(t *testing.T) {
	in := "cpu  100 5 40 9000 7 2 3 1 0 0\ncpu0 50 2 20 4500 3 1 1 0 0 0\nintr 1\n"
	var st agent.Stats
	if err := parseProcStat(strings.NewReader(in), &st); err != nil {
		t.Fatal(err)
	}
	// (user+nice) = 105 ticks, (system+irq+softirq) = 45, steal 1; 10 ms a tick.
	if st.UserNanos != 1_050_000_000 || st.SystemNanos != 450_000_000 || st.CPUNanos != 1_510_000_000 {
		t.Errorf("got user %d system %d total %d", st.UserNanos, st.SystemNanos, st.CPUNanos)
	}
	for _, bad := range []string{"intr 1\n", "cpu 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n"} {
		if err := parseProcStat(strings.NewReader(bad), &st); err == nil {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
}

func TestParseMeminfo(t *testing.T) {
	in := "MemTotal:        1000 kB\nMemFree:          400 kB\nMemAvailable:     700 kB\nAnonPages:        250 kB\nInactive(file):    50 kB\n"
	var st agent.Stats
	if err := parseMeminfo(strings.NewReader(in), &st); err != nil {
		t.Fatal(err)
	}
	if st.MemoryTotal != 1000<<10 || st.MemoryUsage != 600<<10 || st.Anon != 250<<10 || st.InactiveFile != 50<<10 {
		t.Errorf("got %+v", st)
	}
	if err := parseMeminfo(strings.NewReader("MemTotal: 1 kB\n"), &st); err == nil {
		t.Error("meminfo without MemFree accepted")
	}
}

// TestReadStatsOfThisMachine reads the real procfs of the test's machine:
// the same files init reads inside the enclave.
func TestReadStatsOfThisMachine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("procfs is Linux's")
	}
	st, err := ReadStats("/proc")
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUNanos == 0 || st.MemoryTotal == 0 || st.MemoryUsage == 0 || st.MemoryUsage > st.MemoryTotal || st.Processes == 0 {
		t.Errorf("implausible stats of this machine: %+v", st)
	}
	// Kernel threads are not counted: a directory of fake processes, one
	// with an empty cmdline, counts one.
	dir := t.TempDir()
	for pid, cmdline := range map[string]string{"1": "init\x00", "2": "", "self": "x"} {
		if err := os.MkdirAll(filepath.Join(dir, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, pid, "cmdline"), []byte(cmdline), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n := countProcesses(dir); n != 1 {
		t.Errorf("countProcesses = %d, want 1", n)
	}
}
