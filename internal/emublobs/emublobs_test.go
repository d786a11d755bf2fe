package emublobs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

func repoFile(t *testing.T, rel string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", rel)
}

// The Go pins are hack/emu-kernel.sh's, so both make the same blob set.
func TestPinsMatchScript(t *testing.T) {
	b, err := os.ReadFile(repoFile(t, "hack/emu-kernel.sh"))
	if err != nil {
		t.Fatal(err)
	}
	script := string(b)
	for name, want := range map[string]string{
		`PKG=\$\{NITROPOD_EMU_KERNEL_PKG:-([^}]*)\}`:         Package,
		`VERSION=\$\{NITROPOD_EMU_KERNEL_VERSION:-([^}]*)\}`: Version,
		`SHA256=\$\{NITROPOD_EMU_KERNEL_SHA256:-([^}]*)\}`:   SHA256,
		`CMDLINE="([^"]*)"`:   Cmdline,
		`MODULES=\(([^)]*)\)`: strings.Join(Modules, " "),
	} {
		m := regexp.MustCompile(name).FindStringSubmatch(script)
		if m == nil || m[1] != want {
			t.Errorf("hack/emu-kernel.sh %s: %q, Go has %q", name, m, want)
		}
	}
}

func TestLoadOrder(t *testing.T) {
	ko := []byte("\x7fELF\x00junk\x00license=GPL\x00depends=virtio,virtio_ring\x00name=virtio_pci\x00")
	if got := strings.Join(depends(ko), ","); got != "virtio,virtio_ring" {
		t.Fatalf("depends = %q", got)
	}
	if got := depends([]byte("\x00depends=\x00")); len(got) != 0 {
		t.Fatalf("empty depends = %q", got)
	}
	order, err := loadOrder([]string{"c", "a", "b"}, map[string][]string{"c": {"b"}, "b": {"a"}})
	if err != nil || strings.Join(order, " ") != "a b c" {
		t.Fatalf("order = %v, %v", order, err)
	}
	if _, err := loadOrder([]string{"a", "b"}, map[string][]string{"a": {"b"}, "b": {"a"}}); err == nil {
		t.Fatal("circular dependencies: no error")
	}
}

func TestDefaultAndCheck(t *testing.T) {
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	t.Setenv(EnvDir, "")
	user := filepath.Join(data, "nitropod", "blobs", "emu")
	if got := UserDir(); got != user {
		t.Fatalf("UserDir = %s, want %s", got, user)
	}
	if got := Default(); got != user && !present(SystemDir) {
		t.Fatalf("Default = %s, want %s", got, user)
	}
	err := Check(user)
	if err == nil || !strings.Contains(err.Error(), "`"+PrepareCommand+"`") {
		t.Fatalf("Check of a missing blob set: %v; want the command named", err)
	}
	other := t.TempDir()
	if err := Check(other); err == nil || !strings.Contains(err.Error(), PrepareCommand+" --dir "+other) {
		t.Fatalf("Check of a missing --blobs dir: %v", err)
	}
	t.Setenv(EnvDir, other)
	if got := Default(); got != other {
		t.Fatalf("Default with %s set = %s", EnvDir, got)
	}
	t.Setenv(EnvDir, "")
	if err := os.MkdirAll(user, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(user, "bzImage"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Check(user); err != nil {
		t.Fatal(err)
	}
	if got := Default(); got != user {
		t.Fatalf("Default = %s, want %s", got, user)
	}
}

// Prepare from the cached pinned package makes the same files as
// hack/emu-kernel.sh did for make emu-kernel, and a second run does nothing.
func TestPrepareMatchesScript(t *testing.T) {
	cache := os.Getenv("NITROPOD_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "nitropod")
	}
	if _, err := os.Stat(filepath.Join(cache, Package+"_"+Version+"_amd64.deb")); err != nil {
		t.Skipf("the pinned kernel package is not cached (make emu-kernel downloads it): %v", err)
	}
	ref := repoFile(t, "_output/blobs/emu")
	if os.Getenv("NITROPOD_OUTPUT") != "" {
		ref = filepath.Join(os.Getenv("NITROPOD_OUTPUT"), "blobs", "emu")
	}
	if !present(ref) {
		t.Skip("no blob set from make emu-kernel to compare with")
	}
	dir := filepath.Join(t.TempDir(), "emu")
	var logs []string
	res, err := Prepare(context.Background(), Options{Dir: dir, CacheDir: cache, Log: func(s string) { logs = append(logs, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.UpToDate || len(logs) == 0 {
		t.Fatalf("first Prepare: %+v, logs %q", res, logs)
	}
	want, err := os.ReadDir(ref)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadDir(dir)
	if len(got) != len(want) {
		t.Fatalf("prepared %d files, make emu-kernel %d", len(got), len(want))
	}
	for _, e := range want {
		a, err1 := os.ReadFile(filepath.Join(ref, e.Name()))
		b, err2 := os.ReadFile(filepath.Join(dir, e.Name()))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs from make emu-kernel's (%v, %v)", e.Name(), err1, err2)
		}
	}
	if res, err := Prepare(context.Background(), Options{Dir: dir, CacheDir: cache}); err != nil || !res.UpToDate {
		t.Fatalf("second Prepare: %+v, %v; want up to date", res, err)
	}
	if _, err := os.Stat(dir + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("staging directory left behind: %v", err)
	}
}
