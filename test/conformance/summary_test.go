package conformance

import "testing"

func TestParseSummary(t *testing.T) {
	out := "junk\nSummarizing 2 Failures:\n  [FAIL] [k8s.io] Streaming runtime should support exec [It] sync\n  /x.go:1\n" +
		"  [TIMEDOUT] [k8s.io] Container attach\n\nRan 80 of 95 Specs in 120.5 seconds\nFAIL! -- 78 Passed | 2 Failed | 0 Pending | 15 Skipped\n"
	r, err := ParseSummary(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ran != 80 || r.Total != 95 || r.Passed != 78 || r.Failed != 2 || r.Skippd != 15 || r.Seconds != 120.5 || len(r.Failures) != 2 {
		t.Fatalf("parsed %+v", r)
	}
	if _, err := ParseSummary("no summary"); err == nil {
		t.Fatal("no error for output without a summary")
	}
}
