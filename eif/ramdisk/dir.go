package ramdisk

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nitropod/nitropod/eif/cpio"
)

// WriteDir writes the customer ramdisk for an unpacked root filesystem (a
// container's mounted rootfs) and the process to run in it. Files keep their
// type, mode (including setuid/setgid/sticky), owner, mtime, symlink target
// and device numbers; hard links inside root stay hard links; the entries are
// written in lexical order, so the archive depends only on the tree. Symlinks
// are never followed.
func WriteDir(w io.Writer, root string, proc Process) error {
	fi, err := os.Lstat(root)
	if err != nil {
		return fmt.Errorf("writing customer ramdisk: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("writing customer ramdisk: rootfs %s is not a directory", root)
	}
	links, err := scanHardLinks(root)
	if err != nil {
		return fmt.Errorf("writing customer ramdisk: %w", err)
	}
	cw := cpio.NewWriter(w)
	if err := writeProcess(cw, proc); err != nil {
		return fmt.Errorf("writing customer ramdisk: %w", err)
	}
	type group struct {
		ino  uint32
		seen int
	}
	groups := map[[2]uint64]*group{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		name := RootfsDir
		if rel != "." {
			name = RootfsDir + "/" + filepath.ToSlash(rel)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := statOf(fi)
		h := &cpio.Header{
			Name: name, Mode: fileMode(fi, st), UID: st.uid, GID: st.gid,
			Mtime: fi.ModTime().Unix(), RDevMajor: st.rdevMajor, RDevMinor: st.rdevMin,
		}
		if rel == "." {
			// The root's own metadata is the container runtime's (an
			// overlay's upper directory, made per container) or the
			// unpacking tool's, never the image's: fixed, so that every
			// replica of a Pod template and `nitropod pcr` measure alike.
			h.Mode, h.UID, h.GID, h.Mtime = cpio.TypeDir|0o755, 0, 0, 0
		}
		switch h.Mode & cpio.ModeType {
		case cpio.TypeDir:
			if err := cw.WriteHeader(h); err != nil {
				return err
			}
			if rel == "." {
				for _, r := range RequiredDirs {
					if _, err := os.Lstat(filepath.Join(root, r)); errors.Is(err, fs.ErrNotExist) {
						if err := cw.WriteHeader(&cpio.Header{Name: RootfsDir + "/" + r, Mode: requiredDirMode(r)}); err != nil {
							return err
						}
					}
				}
			}
			return nil
		case cpio.TypeSymlink:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			h.Linkname = t
			return cw.WriteHeader(h)
		case cpio.TypeReg:
			key := [2]uint64{st.dev, st.ino}
			withData := true
			if n := links[key]; n > 1 {
				g := groups[key]
				if g == nil {
					g = &group{ino: cw.NextIno()}
					groups[key] = g
				}
				g.seen++
				h.Ino, h.Nlink = g.ino, uint32(n)
				withData = g.seen == n // newc keeps the data with the last link
			}
			if !withData {
				return cw.WriteHeader(h)
			}
			f, err := os.OpenFile(p, os.O_RDONLY|openNoFollow, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			h.Size = fi.Size()
			if err := cw.WriteHeader(h); err != nil {
				return err
			}
			if _, err := cw.ReadFrom(f); err != nil {
				return fmt.Errorf("%s: %w (did it change during the build?)", p, err)
			}
			return nil
		default:
			return cw.WriteHeader(h)
		}
	})
	if err != nil {
		return fmt.Errorf("writing customer ramdisk from %s: %w", root, err)
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("writing customer ramdisk: %w", err)
	}
	return nil
}

// scanHardLinks counts, for each regular file with more than one link, how
// many of its names lie inside root.
func scanHardLinks(root string) (map[[2]uint64]int, error) {
	links := map[[2]uint64]int{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := statOf(fi); ok && st.nlink > 1 {
			links[[2]uint64{st.dev, st.ino}]++
		}
		return nil
	})
	return links, err
}

// fileMode converts a FileInfo to a cpio mode.
func fileMode(fi fs.FileInfo, st statT) uint32 {
	if st.mode != 0 {
		return st.mode
	}
	m := fi.Mode()
	perm := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		perm |= cpio.ModeSetuid
	}
	if m&fs.ModeSetgid != 0 {
		perm |= cpio.ModeSetgid
	}
	if m&fs.ModeSticky != 0 {
		perm |= cpio.ModeSticky
	}
	switch {
	case m.IsDir():
		return cpio.TypeDir | perm
	case m&fs.ModeSymlink != 0:
		return cpio.TypeSymlink | perm
	case m&fs.ModeNamedPipe != 0:
		return cpio.TypeFifo | perm
	case m&fs.ModeSocket != 0:
		return cpio.TypeSocket | perm
	case m&fs.ModeCharDevice != 0:
		return cpio.TypeChar | perm
	case m&fs.ModeDevice != 0:
		return cpio.TypeBlock | perm
	}
	return cpio.TypeReg | perm
}
