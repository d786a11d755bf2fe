// Package safefile reads small files that a Pod controls on behalf of a
// root process on the node (the shim reading a Pod's service-account token
// or licence from the host side of a volume).
//
// The file is named by a root directory that the node chose (the source of
// the volume's bind mount, made by the kubelet) and a path beneath it that
// the Pod chose. Everything under the root may have been arranged by the Pod:
// symlinks to /dev/zero or to another Pod's files, FIFOs that block an open,
// huge files. ReadBeneath therefore:
//
//   - resolves the path strictly beneath the root: absolute symlinks, ".."
//     above the root and /proc-style magic links are refused, so nothing
//     outside the volume can be reached. Relative symlinks that stay inside
//     the volume are followed, because Kubernetes Secret and projected
//     volumes are built from them (token -> ..data/token);
//   - opens without blocking (O_NONBLOCK) and accepts regular files only
//     (checked with fstat on the opened descriptor, so a swap after the
//     check does not matter);
//   - reads at most a caller-given number of bytes, and gives up after a
//     time limit.
//
// On Linux 5.6 and later the resolution is done by the kernel (openat2 with
// RESOLVE_BENEATH and RESOLVE_NO_MAGICLINKS). On older kernels (openat2
// answers ENOSYS) the same rules are applied by walking the path one
// component at a time with O_NOFOLLOW and following each relative symlink by
// hand, at most MaxSymlinks of them.
package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Timeout bounds a whole ReadBeneath (open and read). A regular file on a
// local volume is read in microseconds; a network or FUSE volume that hangs
// must not hang the caller.
const Timeout = 10 * time.Second

// MaxSymlinks bounds the symlinks followed in one path (as the kernel's 40).
const MaxSymlinks = 40

// ErrNotRegular, ErrTooLarge and ErrEscapes classify refusals.
var (
	ErrNotRegular = errors.New("not a regular file")
	ErrTooLarge   = errors.New("file too large")
	ErrEscapes    = errors.New("path leaves the volume")
)

// forceFallback makes ReadBeneath use the portable walk (tests).
var forceFallback = false

// ReadBeneath reads the regular file rel beneath the directory root, of at
// most max bytes (see the package documentation for the rules). rel may be
// absolute; it is taken relative to root either way. Errors name root and
// rel and wrap ErrNotRegular, ErrTooLarge, ErrEscapes or the system error
// (fs.ErrNotExist for a missing file).
func ReadBeneath(root, rel string, max int64) ([]byte, error) {
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := readBeneath(root, rel, max)
		done <- result{b, err}
	}()
	t := time.NewTimer(Timeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r.b, r.err
	case <-t.C:
		// The goroutine stays blocked in the kernel; its result is dropped.
		return nil, fmt.Errorf("reading %s beneath %s: gave up after %v", rel, root, Timeout)
	}
}

func readBeneath(root, rel string, max int64) ([]byte, error) {
	what := fmt.Sprintf("%s beneath %s", rel, root)
	clean := strings.TrimPrefix(path.Clean("/"+rel), "/")
	if clean == "" {
		return nil, fmt.Errorf("reading %s: %w", what, ErrNotRegular)
	}
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reading %s: opening the volume: %w", what, &os.PathError{Op: "open", Path: root, Err: err})
	}
	defer unix.Close(dir)
	fd := -1
	if !forceFallback {
		fd, err = unix.Openat2(dir, clean, &unix.OpenHow{
			// No O_NOFOLLOW: the last component of a Secret or projected
			// volume's file is a relative symlink (token -> ..data/token);
			// RESOLVE_BENEATH keeps every link inside the volume.
			Flags:   unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
		})
		if errors.Is(err, unix.EXDEV) {
			return nil, fmt.Errorf("reading %s: %w (a symlink or \"..\" points outside the volume)", what, ErrEscapes)
		}
	}
	if forceFallback || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		// ENOSYS: a kernel before 5.6. EPERM: a seccomp filter that does
		// not know openat2. The walk applies the same rules.
		fd, err = walkOpen(dir, clean)
		if errors.Is(err, ErrEscapes) {
			return nil, fmt.Errorf("reading %s: %w; a symlink or \"..\" points outside the volume", what, err)
		}
	}
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("reading %s: the file is a symlink that cannot be followed safely (or a symlink loop): %w", what, ErrNotRegular)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, &os.PathError{Op: "open", Path: path.Join(root, clean), Err: err})
	}
	f := os.NewFile(uintptr(fd), path.Join(root, clean))
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("reading %s: %w (it is a %s)", what, ErrNotRegular, typeName(st.Mode))
	}
	if st.Size > max {
		return nil, fmt.Errorf("reading %s: %w: %d bytes, the limit is %d", what, ErrTooLarge, st.Size, max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if int64(len(b)) > max { // grew after fstat
		return nil, fmt.Errorf("reading %s: %w: more than %d bytes", what, ErrTooLarge, max)
	}
	return b, nil
}

// walkOpen opens rel beneath dir without openat2: one component at a time,
// never following a symlink in the kernel; relative symlinks are expanded by
// hand and ".." never goes above dir.
func walkOpen(dir int, rel string) (int, error) {
	stack := []int{} // directories below dir we are in; dir itself is not closed here
	defer func() {
		for _, d := range stack {
			unix.Close(d)
		}
	}()
	cur := func() int {
		if len(stack) == 0 {
			return dir
		}
		return stack[len(stack)-1]
	}
	todo := strings.Split(rel, "/")
	links := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return -1, fmt.Errorf("%w (\"..\" above the volume)", ErrEscapes)
			}
			unix.Close(stack[len(stack)-1])
			stack = stack[:len(stack)-1]
			continue
		}
		fd, err := unix.Openat(cur(), name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			unix.Close(fd)
			if links++; links > MaxSymlinks {
				return -1, unix.ELOOP
			}
			buf := make([]byte, unix.PathMax)
			n, err := unix.Readlinkat(cur(), name, buf)
			if err != nil {
				return -1, err
			}
			target := string(buf[:n])
			if strings.HasPrefix(target, "/") {
				return -1, fmt.Errorf("%w (absolute symlink %s -> %s)", ErrEscapes, name, target)
			}
			todo = append(strings.Split(target, "/"), todo...)
		case unix.S_IFDIR:
			if len(todo) == 0 {
				unix.Close(fd)
				return -1, unix.EISDIR
			}
			stack = append(stack, fd)
		default:
			unix.Close(fd)
			if len(todo) > 0 && !allEmpty(todo) {
				return -1, unix.ENOTDIR
			}
			return unix.Openat(cur(), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		}
	}
	return -1, unix.EISDIR
}

func allEmpty(s []string) bool {
	for _, x := range s {
		if x != "" && x != "." {
			return false
		}
	}
	return true
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFLNK:
		return "symlink"
	}
	return fmt.Sprintf("file of mode %#o", mode&unix.S_IFMT)
}
