package initproc

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nitropod/nitropod/eif/ramdisk"
)

func writeFile(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
		t.Fatal(err)
	}
}

func TestLookPath(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "bin/sh"), 0o755)
	writeFile(t, filepath.Join(root, "usr/local/bin/app"), 0o755)
	writeFile(t, filepath.Join(root, "usr/bin/app"), 0o755)
	writeFile(t, filepath.Join(root, "usr/bin/data"), 0o644)
	writeFile(t, filepath.Join(root, "srv/run.sh"), 0o755)
	_ = os.MkdirAll(filepath.Join(root, "usr/bin/dir"), 0o755)

	for _, tc := range []struct {
		name, argv0, path, cwd, want, err string
	}{
		{name: "first match on PATH", argv0: "app", path: "/usr/local/bin:/usr/bin", cwd: "/", want: "/usr/local/bin/app"},
		{name: "PATH order", argv0: "app", path: "/usr/bin:/usr/local/bin", cwd: "/", want: "/usr/bin/app"},
		{name: "default PATH", argv0: "sh", cwd: "/", want: "/bin/sh"},
		{name: "absolute", argv0: "/srv/run.sh", cwd: "/", want: "/srv/run.sh"},
		{name: "relative to cwd", argv0: "./run.sh", cwd: "/srv", want: "/srv/run.sh"},
		{name: "relative PATH entry", argv0: "run.sh", path: ".", cwd: "/srv", want: "/srv/run.sh"},
		{name: "not executable is skipped", argv0: "data", path: "/usr/bin", cwd: "/", err: `"data" not found in PATH /usr/bin`},
		{name: "directory is skipped", argv0: "dir", path: "/usr/bin", cwd: "/", err: "not found"},
		{name: "missing", argv0: "nope", path: "/usr/bin:/bin", cwd: "/", err: `command "nope" not found in PATH /usr/bin:/bin inside the image`},
		{name: "missing absolute", argv0: "/nope", cwd: "/", err: "no such file in the image"},
		{name: "absolute not executable", argv0: "/usr/bin/data", cwd: "/", err: "is not executable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var env []string
			if tc.path != "" {
				env = []string{"PATH=" + tc.path}
			}
			got, err := LookPath(root, tc.argv0, env, tc.cwd)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("LookPath(%q) = %q, %v; want an error containing %q", tc.argv0, got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("LookPath(%q) = %q, want %q", tc.argv0, got, tc.want)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		proc ramdisk.Process
		want []string
	}{
		{"adds PATH and root's HOME", ramdisk.Process{Env: []string{"A=1"}}, []string{"A=1", "PATH=" + DefaultPath, "HOME=/root"}},
		{"keeps PATH and HOME", ramdisk.Process{Env: []string{"PATH=/x", "HOME=/h"}, UID: 33}, []string{"PATH=/x", "HOME=/h"}},
		{"non-root HOME", ramdisk.Process{UID: 1000}, []string{"PATH=" + DefaultPath, "HOME=/"}},
		{"empty PATH is replaced", ramdisk.Process{Env: []string{"PATH=", "HOME="}}, []string{"PATH=", "HOME=", "PATH=" + DefaultPath}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, Env(&tc.proc)); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestReadProcess(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	_ = os.WriteFile(good, []byte(`{"args":["sh","-c","true"],"env":["A=1"],"cwd":"/srv","uid":33,"gid":33,"additionalGids":[4]}`), 0o644)
	p, err := ReadProcess(good)
	if err != nil {
		t.Fatal(err)
	}
	want := &ramdisk.Process{Args: []string{"sh", "-c", "true"}, Env: []string{"A=1"}, Cwd: "/srv", UID: 33, GID: 33, AdditionalGIDs: []uint32{4}}
	if d := cmp.Diff(want, p); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	for name, content := range map[string]string{"empty args": `{"args":[]}`, "bad json": `{`} {
		f := filepath.Join(dir, name)
		_ = os.WriteFile(f, []byte(content), 0o644)
		if _, err := ReadProcess(f); err == nil {
			t.Errorf("%s: ReadProcess succeeded", name)
		}
	}
	if _, err := ReadProcess(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file: ReadProcess succeeded")
	}
}

func TestModules(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"02-virtio.ko", "00-virtio_ring.ko", "01-b.ko", "README"} {
		_ = os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	got, err := Modules(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "00-virtio_ring.ko"), filepath.Join(dir, "01-b.ko"), filepath.Join(dir, "02-virtio.ko")}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if got, err := Modules(filepath.Join(dir, "none")); err != nil || got != nil {
		t.Errorf("Modules of a missing dir = %v, %v; want none", got, err)
	}
}

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ws         syscall.WaitStatus
		code, sign int
	}{
		{"exit 0", 0, 0, 0},
		{"exit 7", 7 << 8, 7, 0},
		{"killed by TERM", syscall.WaitStatus(syscall.SIGTERM), 143, 15},
		{"killed by KILL", syscall.WaitStatus(syscall.SIGKILL), 137, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, sig := Status(tc.ws)
			if code != tc.code || sig != tc.sign {
				t.Errorf("Status(%#x) = %d, %d; want %d, %d", uint32(tc.ws), code, sig, tc.code, tc.sign)
			}
		})
	}
}

func TestHosts(t *testing.T) {
	want := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tweb\n"
	if got := Hosts("web"); got != want {
		t.Errorf("Hosts = %q, want %q", got, want)
	}
}
