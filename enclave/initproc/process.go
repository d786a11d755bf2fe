package initproc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/nitropod/nitropod/eif/ramdisk"
)

// DefaultPath is PATH when the process's environment has none (Docker's).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultHostname is set when the process names none.
const DefaultHostname = "enclave"

// ReadProcess reads and checks the measured process description.
func ReadProcess(path string) (*ramdisk.Process, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading process description: %w", err)
	}
	var p ramdisk.Process
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decoding process description %s: %w", path, err)
	}
	if len(p.Args) == 0 || p.Args[0] == "" {
		return nil, fmt.Errorf("process description %s has no command (empty args): set the image's entrypoint/cmd or give a command", path)
	}
	return &p, nil
}

// Env returns the process environment with PATH (DefaultPath) and HOME
// added when missing, as container runtimes do.
func Env(p *ramdisk.Process) []string {
	env := append([]string(nil), p.Env...)
	if lookupEnv(env, "PATH") == "" {
		env = append(env, "PATH="+DefaultPath)
	}
	if _, ok := lookupEnvOK(env, "HOME"); !ok {
		home := "/"
		if p.UID == 0 {
			home = "/root"
		}
		env = append(env, "HOME="+home)
	}
	return env
}

func lookupEnv(env []string, key string) string {
	v, _ := lookupEnvOK(env, key)
	return v
}

func lookupEnvOK(env []string, key string) (string, bool) {
	v, ok := "", false
	for _, kv := range env {
		if k, val, found := strings.Cut(kv, "="); found && k == key {
			v, ok = val, true // the last one wins, as in execve's consumers
		}
	}
	return v, ok
}

// LookPath resolves argv0 like execvp: a name with a slash is used as is
// (relative to cwd), otherwise each directory of the PATH in env is tried for
// an executable regular file. root is prepended to every path checked (the
// enclave's "/" is "/" after the root switch; tests pass a directory).
func LookPath(root, argv0 string, env []string, cwd string) (string, error) {
	if strings.Contains(argv0, "/") {
		p := argv0
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		if err := executable(filepath.Join(root, p)); err != nil {
			return "", fmt.Errorf("command %q: %w", argv0, err)
		}
		return p, nil
	}
	path := lookupEnv(env, "PATH")
	if path == "" {
		path = DefaultPath
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(cwd, dir)
		}
		p := filepath.Join(dir, argv0)
		if executable(filepath.Join(root, p)) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %q not found in PATH %s inside the image", argv0, path)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("no such file in the image")
		}
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	if fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not executable (mode %v)", p, fi.Mode().Perm())
	}
	return nil
}

// Hosts is the minimal /etc/hosts for hostname.
func Hosts(hostname string) string {
	return "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + hostname + "\n"
}

// Modules lists the kernel modules in dir in load order (lexical: the
// builder names them NN-<module>.ko). A missing dir has none.
func Modules(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing kernel modules: %w", err)
	}
	var mods []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".ko") && e.Type().IsRegular() {
			mods = append(mods, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(mods)
	return mods, nil
}

// Status converts a wait status into the reported exit code and signal:
// a signal death is 128+signal, as shells report it.
func Status(ws syscall.WaitStatus) (code, signal int) {
	if ws.Signaled() {
		return 128 + int(ws.Signal()), int(ws.Signal())
	}
	return ws.ExitStatus(), 0
}
