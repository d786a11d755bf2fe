package contract

import (
	"slices"
	"strings"
	"testing"

	nitropod "github.com/nitropod/nitropod"
)

func TestParseEnclaves(t *testing.T) {
	for _, tc := range []struct {
		in, err string
	}{
		{`{"a":{"cpu":2,"memoryMiB":64}}`, ""},
		{`{"a":{"cpu":3,"memoryMiB":64}}`, `enclave of container "a": cpu 3 is not an even number of vCPUs between 2 and 1024`},
		{`{"a":{"cpu":2,"memoryMiB":8}}`, `enclave of container "a": memoryMiB 8 is not between 64 and 67108864`},
		{`{"a":{"cpu":2,"memoryMiB":64,"ports":[0]}}`, `enclave of container "a": port 0 is not between 1 and 65535`},
		{`{"b":{"cpu":2,"memoryMiB":64},"a":{"cpu":1,"memoryMiB":64}}`, `enclave of container "a": cpu 1 is not an even number of vCPUs between 2 and 1024`},
		{`[]`, `decoding enclaves annotation "[]": json: cannot unmarshal array into Go value of type map[string]contract.Enclave`},
	} {
		_, err := ParseEnclaves(tc.in)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.err {
			t.Errorf("ParseEnclaves(%s) error = %q, want %q", tc.in, got, tc.err)
		}
	}
}

func TestParseEnclavesBounds(t *testing.T) {
	big := `{"a":{"cpu":2,"memoryMiB":64,"ports":[` + strings.Repeat("1,", 300) + `1]}}`
	if _, err := ParseEnclaves(big); err == nil || !strings.Contains(err.Error(), "ports, more than") {
		t.Errorf("300 ports: error %v, want the port limit", err)
	}
	var b strings.Builder
	b.WriteString("{")
	for i := range 17 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"c` + strings.Repeat("x", i) + `":{"cpu":2,"memoryMiB":64}`)
	}
	b.WriteString("}")
	if _, err := ParseEnclaves(b.String()); err == nil || !strings.Contains(err.Error(), "17 containers") {
		t.Errorf("17 entries: error %v, want the entry limit", err)
	}
	huge := `{"a":{"cpu":2,"memoryMiB":64,"x":"` + strings.Repeat("x", MaxEnclavesAnnotationBytes) + `"}}`
	if _, err := ParseEnclaves(huge); err == nil || !strings.Contains(err.Error(), "bytes, more than") {
		t.Errorf("oversized annotation: error %v, want the size limit", err)
	}
}

// FuzzParseEnclaves: the parser never panics, and accepts what
// MarshalEnclaves writes of anything it accepted.
func FuzzParseEnclaves(f *testing.F) {
	f.Add(`{"nginx-pod":{"cpu":2,"memoryMiB":2048,"ports":[80],"debug":true}}`)
	f.Add(`{}`)
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseEnclaves(s)
		if err != nil {
			return
		}
		again, err := ParseEnclaves(MarshalEnclaves(m))
		if err != nil || len(again) != len(m) {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

func TestParseS3Location(t *testing.T) {
	for _, tc := range []struct{ in, bucket, key, err string }{
		{in: "s3://my-bucket/images/app.eif", bucket: "my-bucket", key: "images/app.eif"},
		{in: "s3://a.b-c/k", bucket: "a.b-c", key: "k"},
		{in: "https://my-bucket/k", err: "is not an S3 URL"},
		{in: "s3://my-bucket", err: "has no object key"},
		{in: "s3://my-bucket/", err: "has no object key"},
		{in: "s3://my-bucket/dir/", err: "has no object key"},
		{in: "s3://My_Bucket/k", err: "is not a valid S3 bucket name"},
		{in: "s3://ab/k", err: "is not a valid S3 bucket name"},
		{in: "s3://a..b/k", err: "two adjacent dots"},
		{in: "s3://192.168.1.1/k", err: "formatted as an IP address"},
		{in: "s3://bucket/" + strings.Repeat("k", 1025), err: "more than S3's 1024"},
		{in: "s3://bucket/a\nb", err: "control character"},
	} {
		l, err := ParseS3Location(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ParseS3Location(%q): %v", tc.in, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseS3Location(%q) error %v, want one containing %q", tc.in, err, tc.err)
		case tc.err == "" && (l.Bucket != tc.bucket || l.Key != tc.key || l.String() != tc.in):
			t.Errorf("ParseS3Location(%q) = %+v", tc.in, l)
		}
	}
}

func TestDeviceIDsRoundTrip(t *testing.T) {
	if n, err := ParseCPUDeviceID(CPUDeviceID(17)); err != nil || n != 17 {
		t.Errorf("cpu17: %d, %v", n, err)
	}
	node, idx, block, err := ParseMemoryDeviceID(MemoryDeviceID(1, 33, 2048))
	if err != nil || node != 1 || idx != 33 || block != 2048 {
		t.Errorf("memory id: %d %d %d %v", node, idx, block, err)
	}
	if n, err := ParseSlotDeviceID(SlotDeviceID(3)); err != nil || n != 3 {
		t.Errorf("slot3: %d, %v", n, err)
	}
	for _, bad := range []string{"cpu", "cpu-1", "cpu+1", "cpu9999", "cpu1x", "gpu1", "cpu0000000001"} {
		if _, err := ParseCPUDeviceID(bad); err == nil {
			t.Errorf("ParseCPUDeviceID(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"node0-mem1", "node0-mem1-0MiB", "node0-mem1-64", "node0-memx-64MiB", "node0-mem1-64MiB-x", "node-1-mem1-64MiB"} {
		if _, _, _, err := ParseMemoryDeviceID(bad); err == nil {
			t.Errorf("ParseMemoryDeviceID(%q) accepted", bad)
		}
	}
}

func TestAllocationFromDevices(t *testing.T) {
	devs := map[string][]string{
		nitropod.ResourceEnclaveCPU:    {"cpu3", "cpu2"},
		nitropod.ResourceEnclaveMemory: {MemoryDeviceID(0, 1, 64), MemoryDeviceID(0, 2, 64), MemoryDeviceID(0, 2, 64)},
		nitropod.ResourceEnclave:       {"slot1"},
	}
	a, err := AllocationFromDevices(devs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.CPUIDs, []int{2, 3}) || a.MemoryMiB != 128 || a.Slot != 1 {
		t.Errorf("allocation = %+v, want cpus 2,3, 128 MiB (a repeated device counted once), slot 1", a)
	}

	for name, tc := range map[string]struct {
		mutate func(map[string][]string)
		err    string
	}{
		"no cpu":    {func(m map[string][]string) { delete(m, nitropod.ResourceEnclaveCPU) }, "no nitropod.io/enclave-cpu allocated"},
		"no slot":   {func(m map[string][]string) { m[nitropod.ResourceEnclave] = nil }, "no nitropod.io/enclave allocated"},
		"two slots": {func(m map[string][]string) { m[nitropod.ResourceEnclave] = []string{"slot1", "slot2"} }, "2 enclave slots allocated"},
		"mixed sizes": {func(m map[string][]string) {
			m[nitropod.ResourceEnclaveMemory] = []string{MemoryDeviceID(0, 1, 64), MemoryDeviceID(0, 2, 1024)}
		}, "of 64 and 1024 MiB"},
		"foreign cpu": {func(m map[string][]string) { m[nitropod.ResourceEnclaveCPU] = []string{"0000:00:1f.0"} }, "is not an enclave cpu"},
	} {
		m := map[string][]string{}
		for k, v := range devs {
			m[k] = slices.Clone(v)
		}
		tc.mutate(m)
		if _, err := AllocationFromDevices(m); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want one containing %q", name, err, tc.err)
		}
	}
}
