package initproc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/eif/ramdisk"
	"github.com/nitropod/nitropod/enclave/agent"
)

// CheckDelivery reports why init refuses d for the measured process p, or
// nil: every env name and mount path must be allowed by the policy the EIF
// records (p.Delivery, or contract.DefaultPolicy for an EIF that records
// none), no delivered name may replace a measured one, and the mounts must
// be well formed. The message names the first offending item; it reaches
// the Pod's events as the container's start error.
func CheckDelivery(p *ramdisk.Process, d agent.Delivery) error {
	pol := contract.DefaultPolicy()
	if p.Delivery != nil {
		pol = *p.Delivery
	}
	if len(d.Hostname) > 64 || strings.ContainsAny(d.Hostname, "\x00/ ") {
		return fmt.Errorf("hostname %s is not a host name of at most 64 bytes", contract.Clip(d.Hostname))
	}
	measured := map[string]bool{}
	for _, kv := range p.Env {
		k, _, _ := strings.Cut(kv, "=")
		measured[k] = true
	}
	seenEnv := map[string]bool{}
	for _, kv := range d.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("env entry %s has no =", contract.Clip(kv))
		}
		if seenEnv[k] {
			return fmt.Errorf("env %s delivered twice", contract.Clip(k))
		}
		seenEnv[k] = true
		if err := pol.CheckEnv(k, measured); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for _, m := range d.Mounts {
		if err := pol.CheckMount(m.Path); err != nil {
			return err
		}
		if seen[m.Path] {
			return fmt.Errorf("mount %s delivered twice", contract.Clip(m.Path))
		}
		seen[m.Path] = true
		for _, sys := range []string{"/proc", "/sys", "/dev"} {
			if m.Path == sys || strings.HasPrefix(m.Path, sys+"/") {
				return fmt.Errorf("mount %s is under %s, which init owns", contract.Clip(m.Path), sys)
			}
		}
		switch m.Kind {
		case agent.MountFile:
			if len(m.Files) != 1 || m.Files[0].Name != "" {
				return fmt.Errorf("file mount %s must carry exactly one unnamed file", contract.Clip(m.Path))
			}
		case agent.MountDir:
			for _, f := range m.Files {
				if err := agent.CheckFileName(f.Name); err != nil || f.Name == "" {
					return fmt.Errorf("volume %s: file name %s is not a clean relative path", contract.Clip(m.Path), contract.Clip(f.Name))
				}
			}
		case agent.MountTmpfs:
			if len(m.Files) != 0 || m.SizeLimit < 0 {
				return fmt.Errorf("tmpfs mount %s carries files or a negative size", contract.Clip(m.Path))
			}
		default:
			return fmt.Errorf("mount %s has unknown kind %s", contract.Clip(m.Path), contract.Clip(m.Kind))
		}
	}
	return nil
}

// dataLink is the symlink of an atomic volume naming its current content
// directory, as in kubelet's volumes; an update writes a new directory and
// renames a new link over it, so a reader sees all old or all new files.
const dataLink = "..data"

// writeVolume writes files into root. Atomic volumes get a new content
// directory ..<seq> that ..data is renamed to, top-level names link through
// ..data, and the previous content directory (prev) and names no longer
// present are removed afterwards. It returns the new content directory.
// Plain volumes (subPath directories, never updated) get the files as is.
func writeVolume(root *os.Root, files []agent.DeliveredFile, atomic bool, seq int, prev string) (string, error) {
	if !atomic {
		return "", writeFiles(root, "", files)
	}
	dir := fmt.Sprintf("..%d", seq)
	if err := root.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := writeFiles(root, dir, files); err != nil {
		return "", err
	}
	tmp := dataLink + "_tmp"
	_ = root.Remove(tmp)
	if err := root.Symlink(dir, tmp); err != nil {
		return "", fmt.Errorf("linking %s: %w", dir, err)
	}
	if err := root.Rename(tmp, dataLink); err != nil {
		return "", fmt.Errorf("switching %s to %s: %w", dataLink, dir, err)
	}
	top := map[string]bool{}
	for _, f := range files {
		first, _, _ := strings.Cut(f.Name, "/")
		top[first] = true
	}
	for name := range top {
		if _, err := root.Lstat(name); errors.Is(err, fs.ErrNotExist) {
			if err := root.Symlink(path.Join(dataLink, name), name); err != nil {
				return "", fmt.Errorf("linking %s: %w", name, err)
			}
		}
	}
	// Names of the previous content that are gone now, and the content
	// before the previous one. The previous one stays until the next
	// update: a reader that resolved ..data just before this swap still
	// finds its files (removing it at once, a reader between resolving
	// the link and opening the file saw ENOENT under load).
	if d, err := root.Open("."); err == nil {
		names, _ := d.Readdirnames(-1)
		d.Close()
		for _, n := range names {
			switch {
			case !strings.HasPrefix(n, ".."):
				if !top[n] {
					_ = root.Remove(n)
				}
			case n != dir && n != prev && n != dataLink && isGeneration(n):
				_ = root.RemoveAll(n)
			}
		}
	}
	return dir, nil
}

func writeFiles(root *os.Root, dir string, files []agent.DeliveredFile) error {
	// Directories first, in order, so that ownership of files is set last.
	for _, f := range slices.Clone(files) {
		name := path.Join(dir, f.Name)
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("creating %s: %w", parent, err)
			}
		}
		if err := writeDelivered(root, name, f); err != nil {
			return err
		}
	}
	return nil
}

func writeDelivered(root *os.Root, name string, f agent.DeliveredFile) error {
	w, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	_, err = w.Write(f.Data)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := root.Lchown(name, int(f.UID), int(f.GID)); err != nil && os.Geteuid() == 0 {
		return fmt.Errorf("setting the owner of %s: %w", name, err)
	}
	// Permission bits only: setuid, setgid and sticky are never delivered.
	if err := root.Chmod(name, fs.FileMode(f.Mode&0o777)); err != nil {
		return fmt.Errorf("setting the mode of %s: %w", name, err)
	}
	return nil
}

// writeFileAtomic writes one delivered file at an absolute path (the
// sandbox's /etc/hosts, a subPath file) through a temporary file and a
// rename, creating its directory.
func writeFileAtomic(p string, f agent.DeliveredFile) error {
	dir, base := path.Split(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tmp := ".nitropod-" + base + ".tmp"
	if err := writeDelivered(root, tmp, f); err != nil {
		return err
	}
	if err := root.Rename(tmp, base); err != nil {
		_ = root.Remove(tmp)
		return fmt.Errorf("replacing %s: %w", p, err)
	}
	return nil
}

// isGeneration reports whether name is one of writeVolume's "..N"
// directories.
func isGeneration(name string) bool {
	n := strings.TrimPrefix(name, "..")
	if n == "" || n == name {
		return false
	}
	for _, c := range n {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
