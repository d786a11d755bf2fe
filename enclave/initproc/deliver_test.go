package initproc

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave/agent"
)

func TestCheckDeliveryProduction(t *testing.T) {
	pol := contract.PolicyFor(contract.ContainerDelivery{
		Literal: []string{"MODE"}, Env: []string{"DB_PASSWORD"},
		Mounts: []contract.Mount{{Path: "/etc/app", Kind: contract.VolumeConfigMap, Volume: "cfg"}},
	})
	proc := &ramdisk.Process{Args: []string{"/app"}, Env: []string{"MODE=prod", "PATH=/bin"}, Delivery: &pol}
	file := []agent.DeliveredFile{{Data: []byte("x")}}
	ok := agent.Delivery{
		Hostname: "web-0",
		Env:      []string{"DB_PASSWORD=s", "HOSTNAME=web-0", "KUBERNETES_SERVICE_HOST=10.0.0.1"},
		Mounts: []agent.DeliveredMount{
			{Path: "/etc/hosts", Kind: agent.MountFile, Files: file},
			{Path: "/etc/app", Kind: agent.MountDir, Atomic: true, Files: []agent.DeliveredFile{{Name: "a"}}},
		},
	}
	if err := CheckDelivery(proc, ok); err != nil {
		t.Fatalf("allowed delivery refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		d    agent.Delivery
		want string
	}{
		{"LD_PRELOAD", agent.Delivery{Env: []string{"LD_PRELOAD=/x.so"}}, `env "LD_PRELOAD"`},
		{"unknown env", agent.Delivery{Env: []string{"EXTRA=1"}}, `env "EXTRA" is not among`},
		{"measured env replaced", agent.Delivery{Env: []string{"MODE=debug"}}, `env "MODE" is measured`},
		{"image env replaced", agent.Delivery{Env: []string{"PATH=/evil"}}, `env "PATH" is measured`},
		{"twice", agent.Delivery{Env: []string{"DB_PASSWORD=a", "DB_PASSWORD=b"}}, "delivered twice"},
		{"undeclared mount", agent.Delivery{Mounts: []agent.DeliveredMount{{Path: "/usr/bin", Kind: agent.MountDir}}}, `mount "/usr/bin" is not among`},
		{"file with a name", agent.Delivery{Mounts: []agent.DeliveredMount{{Path: "/etc/hosts", Kind: agent.MountFile, Files: []agent.DeliveredFile{{Name: "x"}}}}}, "exactly one unnamed file"},
		{"escaping name", agent.Delivery{Mounts: []agent.DeliveredMount{{Path: "/etc/app", Kind: agent.MountDir, Files: []agent.DeliveredFile{{Name: "../x"}}}}}, "not a clean relative path"},
		{"bad hostname", agent.Delivery{Hostname: strings.Repeat("h", 65)}, "hostname"},
	} {
		err := CheckDelivery(proc, tc.d)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	// An EIF without a policy allows only the defaults.
	old := &ramdisk.Process{Args: []string{"/app"}}
	if err := CheckDelivery(old, agent.Delivery{Env: []string{"DB_PASSWORD=s"}}); err == nil {
		t.Error("EIF without a policy accepted a valueFrom name")
	}
	// A debug EIF allows anything.
	dbg := &ramdisk.Process{Args: []string{"/app"}, Delivery: &contract.DeliveryPolicy{Any: true}}
	if err := CheckDelivery(dbg, agent.Delivery{Env: []string{"LD_PRELOAD=/x.so"}}); err != nil {
		t.Errorf("debug EIF: %v", err)
	}
}

// TestWriteVolumeAtomic: while updates swap a volume's content, a reader
// going through the top-level names only ever sees a complete version, and
// removed names and old content directories disappear.
func TestWriteVolumeAtomic(t *testing.T) {
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	version := func(n int) []agent.DeliveredFile {
		body := bytes.Repeat([]byte(fmt.Sprintf("v%04d;", n)), 20000) // 120 KB: not one write
		files := []agent.DeliveredFile{{Name: "data", Mode: 0o444, Data: body}, {Name: "nested/conf", Mode: 0o400, Data: []byte(fmt.Sprint(n))}}
		if n%2 == 0 {
			files = append(files, agent.DeliveredFile{Name: "even", Mode: 0o444, Data: []byte("e")})
		}
		return files
	}
	cur, err := writeVolume(root, version(1), true, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var bad atomic.Value
	var reads atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			b, err := os.ReadFile(filepath.Join(dir, "data"))
			if err != nil {
				bad.Store(err.Error())
				return
			}
			if len(b) != 120000 || !bytes.Equal(b, bytes.Repeat(b[:6], 20000)) {
				bad.Store(fmt.Sprintf("torn read of %d bytes", len(b)))
				return
			}
			reads.Add(1)
		}
	}()
	deadline := time.Now().Add(time.Second)
	n := 1
	for n < 200 && time.Now().Before(deadline) {
		n++
		if cur, err = writeVolume(root, version(n), true, n, cur); err != nil {
			t.Fatal(err)
		}
		// Updates come at least a second apart in an enclave (the host
		// polls kubelet's volume each second); a few ms here still gives
		// the reader many swaps to race with.
		time.Sleep(3 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatalf("reader saw %v", v)
	}
	if reads.Load() == 0 {
		t.Fatal("the reader never read")
	}
	got, err := os.ReadFile(filepath.Join(dir, "nested", "conf"))
	if err != nil || string(got) != fmt.Sprint(n) {
		t.Errorf("nested/conf = %q, %v; want %d", got, err, n)
	}
	_, err = os.Stat(filepath.Join(dir, "even"))
	if even := n%2 == 0; even != (err == nil) {
		t.Errorf("version %d: even present = %v", n, err == nil)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) > 6 { // ..data, ..N, ..N-1 (kept for slow readers), data, nested, even
		t.Errorf("old content left behind: %v", names)
	}
	if fi, err := os.Stat(filepath.Join(dir, "nested", "conf")); err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("mode of nested/conf: %v %v", fi, err)
	}
	t.Logf("%d versions, %d reads", n, reads.Load())
}

func TestWriteFileAtomic(t *testing.T) {
	p := filepath.Join(t.TempDir(), "etc", "hosts")
	for _, body := range []string{"one\n", "two\n"} {
		if err := writeFileAtomic(p, agent.DeliveredFile{Mode: 0o644, Data: []byte(body)}); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != body {
			t.Errorf("%s = %q, want %q", p, b, body)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(p)); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}
