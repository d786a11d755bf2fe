package ramdisk

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nitropod/nitropod/eif/cpio"
)

// RequiredDirs are created in /rootfs when the image lacks them: init mounts
// filesystems there (docs/EIF-FORMAT.md "Ramdisks").
var RequiredDirs = []string{"dev", "proc", "run", "sys", "tmp", "var"}

func requiredDirMode(name string) uint32 {
	if name == "tmp" {
		return cpio.TypeDir | cpio.ModeSticky | 0o777
	}
	return cpio.TypeDir | 0o755
}

// writeProcess writes /nitropod/process.json and, when the process fits
// their one-per-line format, AWS's /cmd and /env. A Pod's multi-line script
// (`sh -c` with a YAML block) or an env value holding a PEM certificate has
// newlines; nitropod-init reads only process.json, so such a process runs,
// and the parity files, which AWS's init could not have used anyway, are
// left out.
func writeProcess(cw *cpio.Writer, proc Process) error {
	if len(proc.Args) == 0 {
		return fmt.Errorf("writing process: no command (set an entrypoint or command)")
	}
	oneLine := true
	for _, a := range proc.Args {
		if strings.Contains(a, "\x00") {
			return fmt.Errorf("writing process: argument %q contains a NUL byte, which no program can receive: remove it from the command or args", a)
		}
		oneLine = oneLine && !strings.Contains(a, "\n")
	}
	for _, e := range proc.Env {
		if strings.Contains(e, "\x00") || !strings.Contains(e, "=") || strings.HasPrefix(e, "=") {
			return fmt.Errorf("writing process: environment entry %q is not NAME=value without NUL bytes", e)
		}
		oneLine = oneLine && !strings.Contains(e, "\n")
	}
	js, err := json.Marshal(proc)
	if err != nil {
		return fmt.Errorf("encoding process: %w", err)
	}
	lines := func(ss []string) string {
		var b strings.Builder
		for _, s := range ss {
			b.WriteString(s)
			b.WriteByte('\n')
		}
		return b.String()
	}
	if oneLine {
		for _, f := range []struct{ name, data string }{{CmdPath, lines(proc.Args)}, {EnvPath, lines(proc.Env)}} {
			if err := writeFile(cw, f.name, 0o600, f.data); err != nil {
				return err
			}
		}
	}
	if err := cw.WriteHeader(&cpio.Header{Name: path.Dir(ProcessPath), Mode: cpio.TypeDir | 0o755}); err != nil {
		return err
	}
	return writeFile(cw, ProcessPath, 0o600, string(js)+"\n")
}

func writeFile(cw *cpio.Writer, name string, perm uint32, data string) error {
	if err := cw.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | perm, Size: int64(len(data))}); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if _, err := io.WriteString(cw, data); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// WriteBootstrap writes the bootstrap ramdisk: /init (the init binary read
// from initPath, mode 0755), /dev with the /dev/console node (so that init's
// output is visible before it mounts devtmpfs), and each module as
// /nitropod/modules/NN-<name>.ko in the given load order. Entries carry
// mtime 0 and root ownership, so the result depends only on the files'
// contents.
func WriteBootstrap(w io.Writer, initPath string, modules []string) error {
	cw := cpio.NewWriter(w)
	if err := cw.WriteHeader(&cpio.Header{Name: "dev", Mode: cpio.TypeDir | 0o755}); err != nil {
		return fmt.Errorf("writing bootstrap ramdisk: %w", err)
	}
	if err := cw.WriteHeader(&cpio.Header{Name: "dev/console", Mode: cpio.TypeChar | 0o600, RDevMajor: 5, RDevMinor: 1}); err != nil {
		return fmt.Errorf("writing bootstrap ramdisk: %w", err)
	}
	if err := copyFile(cw, InitPath, initPath, 0o755); err != nil {
		return fmt.Errorf("writing bootstrap ramdisk: init: %w", err)
	}
	if len(modules) > 99 {
		return fmt.Errorf("writing bootstrap ramdisk: %d modules, at most 99 fit the NN- prefix", len(modules))
	}
	for _, d := range []string{path.Dir(ModulesDir), ModulesDir} {
		if err := cw.WriteHeader(&cpio.Header{Name: d, Mode: cpio.TypeDir | 0o755}); err != nil {
			return fmt.Errorf("writing bootstrap ramdisk: %w", err)
		}
	}
	for i, m := range modules {
		name := fmt.Sprintf("%s/%02d-%s", ModulesDir, i, filepath.Base(m))
		if err := copyFile(cw, name, m, 0o644); err != nil {
			return fmt.Errorf("writing bootstrap ramdisk: module: %w", err)
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("writing bootstrap ramdisk: %w", err)
	}
	return nil
}

func copyFile(cw *cpio.Writer, name, src string, perm uint32) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	if err := cw.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | perm, Size: fi.Size()}); err != nil {
		return err
	}
	if _, err := cw.ReadFrom(f); err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
