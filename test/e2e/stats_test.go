//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"time"
)

// summary is the part of kubelet's /stats/summary this test reads.
type summary struct {
	Pods []struct {
		PodRef struct {
			Name, Namespace string
		} `json:"podRef"`
		Containers []struct {
			Name string `json:"name"`
			CPU  *struct {
				UsageCoreNanoSeconds *uint64 `json:"usageCoreNanoSeconds"`
			} `json:"cpu"`
			Memory *struct {
				WorkingSetBytes *uint64 `json:"workingSetBytes"`
			} `json:"memory"`
		} `json:"containers"`
	} `json:"pods"`
}

// enclaveStatsInSummary: kubelet's summary API (what metrics-server and
// `kubectl top` read) shows an enclave container's own use. Its app fills
// 96 MiB of the enclave's tmpfs: a working set that large can only be the
// enclave's, the launcher (the container's host process) stays at a few
// MiB and QEMU runs outside the Pod's cgroups.
func (e *env) enclaveStatsInSummary() {
	t := e.t
	const name, fillMiB = "stats", 96
	e.mustKubectl(busyboxEnclavePod(name, "2", []string{"sh", "-c",
		fmt.Sprintf("dd if=/dev/zero of=/tmp/fill bs=1M count=%d 2>/dev/null; echo filled; exec sleep 3600", fillMiB)}), "apply", "-f", "-")
	defer e.deleteEnclavePod(name)
	e.waitLogs(name, "filled", 5*time.Minute)

	var ws, cpu uint64
	deadline := time.Now().Add(90 * time.Second) // kubelet refreshes stats every 10-15 s
	for time.Now().Before(deadline) {
		raw := e.mustKubectl("", "get", "--raw", "/api/v1/nodes/"+e.c.NodeName+"/proxy/stats/summary")
		var s summary
		if err := json.Unmarshal([]byte(raw), &s); err != nil {
			t.Fatalf("decoding the stats summary: %v", err)
		}
		for _, p := range s.Pods {
			if p.PodRef.Name != name || p.PodRef.Namespace != "default" {
				continue
			}
			for _, c := range p.Containers {
				if c.Name != "app" || c.Memory == nil || c.Memory.WorkingSetBytes == nil || c.CPU == nil || c.CPU.UsageCoreNanoSeconds == nil {
					continue
				}
				ws, cpu = *c.Memory.WorkingSetBytes, *c.CPU.UsageCoreNanoSeconds
			}
		}
		if ws >= fillMiB<<20 && cpu > 0 {
			t.Logf("summary: container app of %s: working set %d MiB, cpu %v", name, ws>>20, time.Duration(cpu))
			return
		}
		time.Sleep(3 * time.Second)
	}
	t.Errorf("kubelet's summary shows container app of %s with a working set of %d MiB and %d ns of CPU; want at least the %d MiB its app holds in the enclave",
		name, ws>>20, cpu, fillMiB)
}
