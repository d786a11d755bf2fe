package contract

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// MaxCPUID bounds the CPU ids ParseCPUList accepts, so that a hostile or
// corrupt range such as "0-4294967295" cannot make it allocate gigabytes.
// Linux's NR_CPUS is at most 8192 on x86_64.
const MaxCPUID = 8191

// ParseCPUList parses the kernel's cpu-list syntax ("0-3,8,10-11", the format
// of ne_cpus, cpulist and thread_siblings_list) into sorted, unique CPU ids.
// Surrounding white space and a trailing newline are ignored; an empty list
// is valid and yields no CPUs.
func ParseCPUList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	// A set rather than a list, so that repeated ranges cost nothing.
	var set [MaxCPUID + 1]bool
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := parseCPUID(lo)
		if err != nil {
			return nil, fmt.Errorf("parsing cpu list %s: %w", Clip(s), err)
		}
		last := first
		if isRange {
			if last, err = parseCPUID(hi); err != nil {
				return nil, fmt.Errorf("parsing cpu list %s: %w", Clip(s), err)
			}
			if last < first {
				return nil, fmt.Errorf("parsing cpu list %s: range %s ends before it starts", Clip(s), Clip(part))
			}
		}
		for c := first; c <= last; c++ {
			set[c] = true
		}
	}
	var cpus []int
	for c, ok := range set {
		if ok {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

func parseCPUID(s string) (int, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s is not a cpu id", Clip(s))
	}
	if n > MaxCPUID {
		return 0, fmt.Errorf("cpu id %d is larger than %d", n, MaxCPUID)
	}
	return n, nil
}

// FormatCPUList writes CPU ids in the kernel's cpu-list syntax with ranges
// ("0-3,8"), the form ne_cpus accepts. The input need not be sorted.
func FormatCPUList(cpus []int) string {
	s := slices.Clone(cpus)
	slices.Sort(s)
	s = slices.Compact(s)
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(s[j]))
		}
		i = j + 1
	}
	return b.String()
}

// JoinCPUIDs writes CPU ids sorted and comma-separated without ranges
// ("2,3,6,7"): the value of NITROPOD_CPU_IDS.
func JoinCPUIDs(cpus []int) string {
	s := slices.Clone(cpus)
	slices.Sort(s)
	parts := make([]string, len(s))
	for i, c := range s {
		parts[i] = strconv.Itoa(c)
	}
	return strings.Join(parts, ",")
}
