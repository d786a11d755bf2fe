package local_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitropod/nitropod/enclave/local"
	"github.com/nitropod/nitropod/enclave/qemu"
	"github.com/nitropod/nitropod/internal/testenv"
	"github.com/nitropod/nitropod/internal/testimage"
)

// firstByte records when the first byte arrives.
type firstByte struct {
	once sync.Once
	at   time.Time
}

func (f *firstByte) Write(p []byte) (int, error) {
	f.once.Do(func() { f.at = time.Now() })
	return len(p), nil
}

// BenchmarkFirstLine measures `nitropod run` of a cached busybox EIF under
// TCG, from the call to the app's first output line, split into host-side
// work and the VM's boot, booting the unpacked kernel (the default) and the
// EIF's bzImage as it is:
//
//	prepare-ms   cache key, lookup and CRC check of the cached EIF
//	hostboot-ms  EIF validation, kernel/ramdisk extraction, QEMU spawn
//	vmboot-ms    QEMU start to init's heartbeat (kernel boot, modules, channel)
//	appstart-ms  heartbeat to the first line (hello, root switch, exec, output)
//	total-ms     all of it
func BenchmarkFirstLine(b *testing.B) {
	testenv.Integration(b)
	bin := testenv.Binary(b, qemu.DefaultBinary)
	initBin := testenv.Binary(b, "nitropod-init")
	blobs := testenv.EmuBlobs(b)
	layout := testimage.WriteOCILayout(b, testimage.Busybox(b, testimage.Cmd("echo", "first line")), b.TempDir())
	opts := local.Options{
		OCILayout: layout, Blobs: blobs, Init: initBin, CacheDir: b.TempDir(), WorkDir: b.TempDir(),
		CPUs: 1, MemoryMiB: 256, Stdout: io.Discard, Stderr: os.Stderr,
	}
	// Fill the cache outside the measurement.
	if _, release, err := local.PrepareEIF(context.Background(), opts, nil); err != nil {
		b.Fatal(err)
	} else {
		release()
	}
	for _, mode := range []struct{ name, kernelCache string }{
		{"unpacked", filepath.Join(b.TempDir(), "kernels")}, // filled by the first run, outside the timing
		{"bzImage", "-"},
	} {
		b.Run(mode.name, func(b *testing.B) {
			firstLine(b, opts, bin, mode.kernelCache)
		})
	}
}

func firstLine(b *testing.B, opts local.Options, bin, kernelCache string) {
	// One untimed run fills the kernel cache.
	warm := opts
	warm.QEMU = qemu.Config{Binary: bin, KernelCache: kernelCache}
	if st, err := local.Run(context.Background(), warm); err != nil || st.Code != 0 {
		b.Fatalf("warm-up run: %+v, %v", st, err)
	}
	var sum struct{ prepare, hostboot, vmboot, appstart, total time.Duration }
	b.ResetTimer()
	for range b.N {
		var t0, booting, started, heartbeat time.Time
		out := &firstByte{}
		o := opts
		o.Stdout = out
		o.Progress = func(s string) {
			if strings.HasPrefix(s, "booting enclave") {
				booting = time.Now()
			}
		}
		o.QEMU = qemu.Config{Binary: bin, KernelCache: kernelCache, Trace: func(step string) {
			switch step {
			case qemu.TraceStarted:
				started = time.Now()
			case qemu.TraceHeartbeat:
				heartbeat = time.Now()
			}
		}}
		t0 = time.Now()
		st, err := local.Run(context.Background(), o)
		if err != nil || st.Code != 0 {
			b.Fatalf("run: %+v, %v", st, err)
		}
		sum.prepare += booting.Sub(t0)
		sum.hostboot += started.Sub(booting)
		sum.vmboot += heartbeat.Sub(started)
		sum.appstart += out.at.Sub(heartbeat)
		sum.total += out.at.Sub(t0)
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(b.N) }
	b.ReportMetric(ms(sum.prepare), "prepare-ms")
	b.ReportMetric(ms(sum.hostboot), "hostboot-ms")
	b.ReportMetric(ms(sum.vmboot), "vmboot-ms")
	b.ReportMetric(ms(sum.appstart), "appstart-ms")
	b.ReportMetric(ms(sum.total), "total-ms")
}
