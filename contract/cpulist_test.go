package contract

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{in: "", want: nil},
		{in: "\n", want: nil},
		{in: "3", want: []int{3}},
		{in: "0-3\n", want: []int{0, 1, 2, 3}},
		{in: "2,3,6-7", want: []int{2, 3, 6, 7}},
		{in: "6-7,2,3,2", want: []int{2, 3, 6, 7}},
		{in: " 1 - 2 , 4 ", want: []int{1, 2, 4}},
		{in: "3-1", wantErr: true},
		{in: "a", wantErr: true},
		{in: "1,,2", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "0-4294967295", wantErr: true},
		{in: "1-2-3", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseCPUList(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseCPUList(%q) error = %v, want error %t", tc.in, err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseCPUList(%q) (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

func TestFormatCPUList(t *testing.T) {
	tests := []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{5}, "5"},
		{[]int{7, 6, 3, 2}, "2-3,6-7"},
		{[]int{1, 2, 3, 5, 9, 10}, "1-3,5,9-10"},
		{[]int{4, 4, 5}, "4-5"},
	}
	for _, tc := range tests {
		if got := FormatCPUList(tc.in); got != tc.want {
			t.Errorf("FormatCPUList(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := JoinCPUIDs([]int{7, 2, 6, 3}); got != "2,3,6,7" {
		t.Errorf("JoinCPUIDs = %q, want 2,3,6,7", got)
	}
}

// FuzzParseCPUList checks that any input either fails or round-trips
// through FormatCPUList to the same sorted set.
func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"", "0-3", "2,3,6-7\n", "1-1,5", "9-2", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cpus, err := ParseCPUList(s)
		if err != nil {
			return
		}
		if !slices.IsSorted(cpus) || len(slices.Compact(slices.Clone(cpus))) != len(cpus) {
			t.Fatalf("ParseCPUList(%q) = %v: not sorted and unique", s, cpus)
		}
		again, err := ParseCPUList(FormatCPUList(cpus))
		if err != nil || !slices.Equal(again, cpus) {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}
