package initproc

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/nitropod/nitropod/enclave/agent"
)

// userHZ is the unit of /proc/stat's CPU times (USER_HZ, 100 on every
// architecture Linux builds enclaves for).
const userHZ = 100

// ReadStats measures the enclave's CPU and memory use from procfs (the
// enclave's own /proc: init runs after the root switch).
func ReadStats(proc string) (agent.Stats, error) {
	var st agent.Stats
	f, err := os.Open(proc + "/stat")
	if err != nil {
		return st, fmt.Errorf("reading CPU times: %w", err)
	}
	err = parseProcStat(f, &st)
	f.Close()
	if err != nil {
		return st, err
	}
	f, err = os.Open(proc + "/meminfo")
	if err != nil {
		return st, fmt.Errorf("reading memory use: %w", err)
	}
	err = parseMeminfo(f, &st)
	f.Close()
	if err != nil {
		return st, err
	}
	st.Processes = countProcesses(proc)
	return st, nil
}

// parseProcStat reads the aggregate "cpu" line of /proc/stat: user nice
// system idle iowait irq softirq steal (guest times are already in user).
func parseProcStat(r io.Reader, st *agent.Stats) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		if len(f) < 9 {
			return fmt.Errorf("/proc/stat cpu line has %d fields, want at least 9", len(f))
		}
		var t [8]uint64
		for i := range t {
			v, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return fmt.Errorf("/proc/stat cpu field %d: %w", i+1, err)
			}
			t[i] = v
		}
		const ns = 1e9 / userHZ
		user, nice, system, irq, softirq, steal := t[0], t[1], t[2], t[5], t[6], t[7]
		st.UserNanos = (user + nice) * ns
		st.SystemNanos = (system + irq + softirq) * ns
		st.CPUNanos = st.UserNanos + st.SystemNanos + steal*ns
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading /proc/stat: %w", err)
	}
	return fmt.Errorf("/proc/stat has no cpu line")
}

// parseMeminfo reads the fields of /proc/meminfo that Stats needs.
func parseMeminfo(r io.Reader, st *agent.Stats) error {
	want := map[string]*uint64{
		"MemTotal:": &st.MemoryTotal, "Inactive(file):": &st.InactiveFile, "AnonPages:": &st.Anon,
	}
	var free uint64
	want["MemFree:"] = &free
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		p, ok := want[f[0]]
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return fmt.Errorf("/proc/meminfo %s: %w", f[0], err)
		}
		if len(f) > 2 && f[2] == "kB" {
			v <<= 10
		}
		*p = v
		found++
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading /proc/meminfo: %w", err)
	}
	if found < len(want) {
		return fmt.Errorf("/proc/meminfo lacks one of MemTotal, MemFree, Inactive(file), AnonPages")
	}
	if free <= st.MemoryTotal {
		st.MemoryUsage = st.MemoryTotal - free
	}
	return nil
}

// countProcesses counts the user-space processes in proc (kernel threads,
// whose cmdline is empty, are not the app's).
func countProcesses(proc string) uint64 {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return 0
	}
	var n uint64
	buf := make([]byte, 1)
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		f, err := os.Open(proc + "/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		if k, _ := f.Read(buf); k > 0 {
			n++
		}
		f.Close()
	}
	return n
}
