package deliver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/enclave/agent"
)

// kubeletVolume lays out dir as kubelet's atomic writer does: files in a
// timestamped directory, ..data naming it, top-level names linking through
// ..data. Calling it again swaps the content the way kubelet updates it.
func kubeletVolume(t testing.TB, dir string, gen int, files map[string]string) {
	t.Helper()
	ts := fmt.Sprintf("..2026_11_30_05_00_00.%d", gen)
	for name, body := range files {
		p := filepath.Join(dir, ts, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		top, _, _ := strings.Cut(name, "/")
		_ = os.Symlink(filepath.Join("..data", top), filepath.Join(dir, top))
	}
}

type podDirs struct{ root, uid string }

func newPod(t *testing.T) podDirs {
	return podDirs{root: t.TempDir(), uid: "0b1c7e4a-1111-2222-3333-444455556666"}
}

func (p podDirs) volume(kind, name string) string {
	d := filepath.Join(p.root, "pods", p.uid, "volumes", contract.KubeletVolumeDir[kind], name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		panic(err)
	}
	return d
}

func TestPlanMountsChecksSources(t *testing.T) {
	pod := newPod(t)
	cfg := pod.volume(contract.VolumeConfigMap, "cfg")
	hosts := filepath.Join(pod.root, "etc-hosts")
	d := contract.ContainerDelivery{Mounts: []contract.Mount{{Path: "/etc/app", Kind: contract.VolumeConfigMap, Volume: "cfg"}}}
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/etc/hosts", Type: "bind", Source: hosts, Options: []string{"rbind"}},
		{Destination: "/etc/app", Type: "bind", Source: cfg, Options: []string{"rbind", "ro"}},
		{Destination: "/run/nitropod/license", Type: "bind", Source: pod.volume(contract.VolumeSecret, "anjuna-license")},
	}}
	ms, err := PlanMounts(spec, d, pod.uid)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Path != "/etc/hosts" || ms[0].Kind != KindFile || ms[1].Source != cfg {
		t.Errorf("mounts = %+v", ms)
	}
	for name, src := range map[string]string{
		"another Pod's volume": strings.Replace(cfg, pod.uid, "99999999-aaaa-bbbb-cccc-dddddddddddd", 1),
		"another kind":         pod.volume(contract.VolumeSecret, "cfg"),
		"a host path":          "/etc",
		"another volume":       pod.volume(contract.VolumeConfigMap, "cfg2"),
	} {
		spec.Mounts[2].Source = src
		if _, err := PlanMounts(spec, d, pod.uid); err == nil || !strings.Contains(err.Error(), "not kubelet's configMap volume") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	spec.Mounts = spec.Mounts[:2]
	if _, err := PlanMounts(spec, d, pod.uid); err == nil || !strings.Contains(err.Error(), "no mount at /etc/app") {
		t.Errorf("missing mount: err = %v", err)
	}
}

func TestCollect(t *testing.T) {
	pod := newPod(t)
	sec := pod.volume(contract.VolumeSecret, "db")
	kubeletVolume(t, sec, 1, map[string]string{"password": "s3cret", "tls/key.pem": "KEY"})
	// A symlink out of the volume planted by someone is not followed.
	_ = os.Symlink("/etc/shadow", filepath.Join(sec, "..2026_11_30_05_00_00.1", "evil"))
	hosts := filepath.Join(pod.root, "etc-hosts")
	if err := os.WriteFile(hosts, []byte("10.1.2.3 web-0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := Plan{
		Hostname: "web-0",
		Env:      []string{"DB_PASSWORD", "HOSTNAME", "ABSENT"},
		Mounts: []Mount{
			{Mount: contract.Mount{Path: "/etc/hosts", Kind: KindFile}, Source: hosts},
			{Mount: contract.Mount{Path: "/etc/db", Kind: contract.VolumeSecret, Volume: "db", ReadOnly: true}, Source: sec},
			{Mount: contract.Mount{Path: "/scratch", Kind: contract.VolumeEmptyDir, Volume: "s", SizeLimit: 1 << 20}, Source: pod.volume(contract.VolumeEmptyDir, "s")},
		},
	}
	d, versions, err := Collect(p, []string{"PATH=/bin", "DB_PASSWORD=pw", "HOSTNAME=web-0"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(d.Env, ",") != "DB_PASSWORD=pw,HOSTNAME=web-0" || d.Hostname != "web-0" {
		t.Errorf("env %v hostname %q", d.Env, d.Hostname)
	}
	if m := d.Mounts[0]; m.Kind != agent.MountFile || string(m.Files[0].Data) != "10.1.2.3 web-0\n" {
		t.Errorf("hosts = %+v", m)
	}
	m := d.Mounts[1]
	got := map[string]string{}
	for _, f := range m.Files {
		got[f.Name] = string(f.Data)
	}
	if m.Kind != agent.MountDir || !m.Atomic || !m.ReadOnly || len(got) != 2 || got["password"] != "s3cret" || got["tls/key.pem"] != "KEY" {
		t.Errorf("secret volume = %+v (%v)", m, got)
	}
	if versions[1] != "..2026_11_30_05_00_00.1" {
		t.Errorf("versions = %q", versions)
	}
	if m := d.Mounts[2]; m.Kind != agent.MountTmpfs || m.SizeLimit != 1<<20 || len(m.Files) != 0 {
		t.Errorf("emptyDir = %+v", m)
	}
	// The cap counts everything, and the message gives the size.
	p.MaxBytes = 20
	_, _, err = Collect(p, []string{"DB_PASSWORD=pw", "HOSTNAME=web-0"})
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Size != int64(len("web-0")+len("DB_PASSWORD=pw")+len("HOSTNAME=web-0")+len("10.1.2.3 web-0\n")+len("s3cret")+len("KEY")) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "is 57 bytes") || !strings.Contains(err.Error(), "max_delivered_bytes") {
		t.Errorf("message %q", err)
	}
}

type updates struct {
	mu  sync.Mutex
	got []map[string]string
	ch  chan struct{}
}

func (u *updates) Update(_ context.Context, mount int, files []agent.DeliveredFile) error {
	m := map[string]string{"#mount": fmt.Sprint(mount)}
	for _, f := range files {
		m[f.Name] = string(f.Data)
	}
	u.mu.Lock()
	u.got = append(u.got, m)
	u.mu.Unlock()
	u.ch <- struct{}{}
	return nil
}

func TestWatchSendsKubeletUpdates(t *testing.T) {
	pod := newPod(t)
	cfg := pod.volume(contract.VolumeConfigMap, "cfg")
	kubeletVolume(t, cfg, 1, map[string]string{"app.conf": "level=info"})
	p := Plan{Mounts: []Mount{{Mount: contract.Mount{Path: "/etc/app", Kind: contract.VolumeConfigMap, Volume: "cfg"}, Source: cfg}}, MaxBytes: 64}
	d, versions, err := Collect(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := &updates{ch: make(chan struct{}, 4)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Watch(ctx, p, d, versions, u, 20*time.Millisecond, t.Logf); close(done) }()
	defer func() { cancel(); <-done }()

	kubeletVolume(t, cfg, 2, map[string]string{"app.conf": "level=debug"})
	select {
	case <-u.ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no update within 5 s")
	}
	if got := u.got[0]; got["#mount"] != "0" || got["app.conf"] != "level=debug" || len(got) != 2 {
		t.Errorf("update = %v", got)
	}
	// An update over the cap is not sent.
	kubeletVolume(t, cfg, 3, map[string]string{"app.conf": strings.Repeat("x", 100)})
	select {
	case <-u.ch:
		t.Errorf("update over the cap sent: %v", u.got[1])
	case <-time.After(200 * time.Millisecond):
	}
}

// TestSubPathMounts: a subPath of a file is delivered as that file, a
// subPath of a directory as its files without kubelet's ..data swap (kubelet
// does not update subPath mounts either), and only from kubelet's
// volume-subpaths directory of the Pod's volume.
func TestSubPathMounts(t *testing.T) {
	pod := newPod(t)
	sub := filepath.Join(pod.root, "pods", pod.uid, "volume-subpaths", "cfg", "app", "0")
	if err := os.MkdirAll(filepath.Dir(sub), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sub, []byte("one file"), 0o640); err != nil {
		t.Fatal(err)
	}
	d := contract.ContainerDelivery{Mounts: []contract.Mount{{Path: "/etc/app.conf", Kind: contract.VolumeConfigMap, Volume: "cfg", SubPath: true, ReadOnly: true}}}
	spec := &specs.Spec{Mounts: []specs.Mount{{Destination: "/etc/app.conf", Type: "bind", Source: sub}}}
	ms, err := PlanMounts(spec, d, pod.uid)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := Collect(Plan{Mounts: ms}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := got.Mounts[0]; m.Kind != agent.MountFile || string(m.Files[0].Data) != "one file" || m.Files[0].Mode != 0o640 {
		t.Errorf("subPath file = %+v", m)
	}
	// A subPath directory.
	dir := filepath.Join(pod.root, "pods", pod.uid, "volume-subpaths", "cfg", "app", "1")
	if err := os.MkdirAll(filepath.Join(dir, "nested"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nested", "x"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Mounts[0].Source = dir
	ms, err = PlanMounts(spec, d, pod.uid)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err = Collect(Plan{Mounts: ms}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := got.Mounts[0]; m.Kind != agent.MountDir || m.Atomic || len(m.Files) != 1 || m.Files[0].Name != "nested/x" {
		t.Errorf("subPath directory = %+v", m)
	}
	// Another volume's subpath is refused.
	spec.Mounts[0].Source = filepath.Join(pod.root, "pods", pod.uid, "volume-subpaths", "other", "app", "0")
	if _, err := PlanMounts(spec, d, pod.uid); err == nil {
		t.Error("another volume's subpath accepted")
	}
}
