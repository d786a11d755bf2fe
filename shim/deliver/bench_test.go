package deliver

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/enclave/agent"
)

// accept is the enclave side of the benchmark: it takes every delivery
// (what init does with it is enclave time, not host time).
type accept struct{}

func (accept) Deliver(agent.Delivery) error            { return nil }
func (accept) Update(int, []agent.DeliveredFile) error { return nil }

// BenchmarkDeliver measures what delivered configuration adds to a
// container's start on the host: reading a kubelet volume of the given size
// (16 files) and the env, and delivering them over a yamux agent channel
// until init's answer. "hostname-only" is what every container delivers,
// the baseline. Channel setup is not timed (every start pays it anyway).
func BenchmarkDeliver(b *testing.B) {
	for _, size := range []int{0, 1 << 20} {
		name := "hostname-only"
		if size > 0 {
			name = fmt.Sprintf("%dKiB-volume", size>>10)
		}
		b.Run(name, func(b *testing.B) {
			pod := b.TempDir()
			vol := filepath.Join(pod, "pods", "uid", "volumes", "kubernetes.io~secret", "s")
			if err := os.MkdirAll(vol, 0o755); err != nil {
				b.Fatal(err)
			}
			files := map[string]string{}
			for i := 0; i < 16 && size > 0; i++ {
				files[fmt.Sprintf("key-%02d", i)] = strings.Repeat("x", size/16)
			}
			kubeletVolume(b, vol, 1, files)
			p := Plan{Hostname: "web-7d9f-abcde", Env: []string{"DB_PASSWORD"}, MaxBytes: contract.DefaultMaxDeliveredBytes}
			if size > 0 {
				p.Mounts = []Mount{{Mount: contract.Mount{Path: "/etc/s", Kind: contract.VolumeSecret, Volume: "s", ReadOnly: true}, Source: vol}}
			}
			env := []string{"DB_PASSWORD=s3cret", "PATH=/bin"}
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				h, e := net.Pipe()
				g, err := agent.NewGuest(e, agent.GuestConfig{})
				if err != nil {
					b.Fatal(err)
				}
				g.HandleDeliveries(accept{})
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				c, err := agent.Connect(ctx, h)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				d, _, err := Collect(p, env)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Deliver(ctx, d); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cancel()
				c.Close()
				g.Close()
				b.StartTimer()
			}
		})
	}
}
