// Package conformance runs the CRI validation suite (critest, pinned with
// the other test tools) against a private containerd with the nitro runtime
// installed (internal/shimtest), once with the default runc handler and once
// with the nitro handler, and checks that nothing is left behind.
//
// The images critest creates containers from are built locally and imported
// under the names critest looks for (it pulls only when the image is
// missing), so no registry is needed. Run it with `make conformance`;
// docs/COMPATIBILITY.md records the results. The suite itself
// (TestConformance) needs the build tag conformance; this file holds the
// parser for ginkgo's summary.
//
// Environment:
//
//	CONFORMANCE_HANDLERS  handlers to run, comma-separated (default "runc,nitro")
//	CONFORMANCE_FOCUS     --ginkgo.focus for every handler (default: all specs)
//	CONFORMANCE_SKIP      --ginkgo.skip for every handler
package conformance

import (
	"bufio"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Result is the summary line of one critest run.
type Result struct {
	Ran, Total                      int
	Passed, Failed, Pending, Skippd int
	Failures                        []string
	Seconds                         float64
}

var (
	ranRE     = regexp.MustCompile(`Ran (\d+) of (\d+) Specs in ([0-9.]+) seconds`)
	countsRE  = regexp.MustCompile(`(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`)
	failureRE = regexp.MustCompile(`^\s*\[(FAIL|TIMEDOUT|PANICKED|INTERRUPTED)\] (.*)$`)
)

// ParseSummary reads ginkgo's report at the end of critest's output.
func ParseSummary(out string) (Result, error) {
	var r Result
	m := ranRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("critest output has no \"Ran N of M Specs\" line (did the suite start?)")
	}
	r.Ran, _ = strconv.Atoi(m[1])
	r.Total, _ = strconv.Atoi(m[2])
	r.Seconds, _ = strconv.ParseFloat(m[3], 64)
	c := countsRE.FindAllStringSubmatch(out, -1)
	if c == nil {
		return r, fmt.Errorf("critest output has no \"N Passed | N Failed | N Pending | N Skipped\" line")
	}
	last := c[len(c)-1]
	r.Passed, _ = strconv.Atoi(last[1])
	r.Failed, _ = strconv.Atoi(last[2])
	r.Pending, _ = strconv.Atoi(last[3])
	r.Skippd, _ = strconv.Atoi(last[4])
	if i := strings.LastIndex(out, "Summarizing "); i >= 0 {
		sc := bufio.NewScanner(strings.NewReader(out[i:]))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if f := failureRE.FindStringSubmatch(sc.Text()); f != nil {
				r.Failures = append(r.Failures, f[1]+" "+strings.TrimSpace(f[2]))
			}
		}
	}
	return r, nil
}
