package deliver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/enclave/agent"
	"github.com/nitropod/nitropod/internal/safefile"
)

// budget counts delivered bytes against the cap; total keeps counting past
// it so that the error can say how large the delivery was.
type budget struct {
	limit, total int64
	files        int
}

func (b *budget) over() bool { return b.total > b.limit }

// maxDepth bounds the directory nesting of a delivered volume.
const maxDepth = 32

// readMount reads one mount's files. The version is the content directory
// ..data names in an atomic (kubelet-written) volume, else "".
func readMount(m Mount, b *budget) (agent.DeliveredMount, string, error) {
	dm := agent.DeliveredMount{Path: m.Path, ReadOnly: m.ReadOnly}
	if m.Kind == contract.VolumeEmptyDir {
		dm.Kind, dm.SizeLimit = agent.MountTmpfs, m.SizeLimit
		return dm, "", nil
	}
	fi, err := os.Stat(m.Source)
	if err != nil {
		return dm, "", fmt.Errorf("delivering %s: %w", m.Path, err)
	}
	if fi.Mode().IsRegular() {
		dm.Kind = agent.MountFile
		f, err := readFile(filepath.Dir(m.Source), filepath.Base(m.Source), "", fi, b)
		if err != nil {
			return dm, "", fmt.Errorf("delivering %s: %w", m.Path, err)
		}
		dm.Files = []agent.DeliveredFile{f}
		return dm, "", nil
	}
	if !fi.IsDir() {
		return dm, "", fmt.Errorf("delivering %s: its source %s is neither a file nor a directory", m.Path, m.Source)
	}
	dm.Kind = agent.MountDir
	ver, err := Version(m.Source)
	if err != nil {
		return dm, "", err
	}
	dm.Atomic = ver != "" && !m.SubPath
	base := "."
	if dm.Atomic {
		base = ver
	}
	if err := walk(m.Source, base, "", 0, &dm.Files, b); err != nil {
		return dm, "", fmt.Errorf("delivering volume %s at %s: %w", m.Volume, m.Path, err)
	}
	return dm, ver, nil
}

// Version is the content directory that ..data names in kubelet's volume
// at dir ("" when there is no ..data link).
func Version(dir string) (string, error) {
	t, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		if os.IsNotExist(err) {
			return "", nil
		}
		if errors.Is(err, syscall.EINVAL) {
			return "", nil // not a symlink
		}
		return "", fmt.Errorf("reading %s/..data: %w", dir, err)
	}
	if !strings.HasPrefix(t, "..") || strings.Contains(t, "/") || t == ".." {
		return "", fmt.Errorf("%s/..data names %q, not a content directory of the volume", dir, t)
	}
	return t, nil
}

// walk reads the regular files under root/base/rel into files, named
// relative to base. Names starting with ".." (kubelet's bookkeeping) are
// skipped at the top; symlinks and special files are skipped everywhere.
func walk(root, base, rel string, depth int, files *[]agent.DeliveredFile, b *budget) error {
	if depth > maxDepth {
		return fmt.Errorf("directories nested more than %d deep", maxDepth)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	d, err := r.Open(path.Join(base, rel))
	if err != nil {
		return err
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if rel == "" && strings.HasPrefix(name, "..") {
			continue
		}
		child := path.Join(rel, name)
		fi, err := r.Lstat(path.Join(base, child))
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			if err := walk(root, base, child, depth+1, files, b); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			f, err := readFile(root, path.Join(base, child), child, fi, b)
			if err != nil {
				return err
			}
			*files = append(*files, f)
		}
		// Symlinks at the top of a kubelet volume name ..data/…, read
		// through it above; others and special files are not delivered.
	}
	return nil
}

func readFile(root, rel, name string, fi fs.FileInfo, b *budget) (agent.DeliveredFile, error) {
	f := agent.DeliveredFile{Name: name, Mode: uint32(fi.Mode().Perm())}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		f.UID, f.GID = st.Uid, st.Gid
	}
	if b.files++; b.files > contract.MaxDeliveredFiles {
		return f, fmt.Errorf("more than %d files", contract.MaxDeliveredFiles)
	}
	b.total += fi.Size()
	if b.over() {
		return f, nil // counted, not read: Collect reports the size
	}
	data, err := safefile.ReadBeneath(root, rel, b.limit-(b.total-fi.Size()))
	if err != nil {
		return f, err
	}
	b.total += int64(len(data)) - fi.Size() // the file may have changed
	f.Data = data
	return f, nil
}
