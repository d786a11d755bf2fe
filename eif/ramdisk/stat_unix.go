//go:build linux || darwin || freebsd

package ramdisk

import (
	"io/fs"
	"syscall"

	"golang.org/x/sys/unix"
)

type statT struct {
	uid, gid, nlink    uint32
	dev, ino           uint64
	rdevMajor, rdevMin uint32
	mode               uint32 // st_mode
}

func statOf(fi fs.FileInfo) (statT, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return statT{}, false
	}
	rdev := uint64(st.Rdev)
	return statT{
		uid: st.Uid, gid: st.Gid, nlink: uint32(st.Nlink),
		dev: uint64(st.Dev), ino: uint64(st.Ino),
		rdevMajor: unix.Major(rdev), rdevMin: unix.Minor(rdev),
		mode: uint32(st.Mode),
	}, true
}

const openNoFollow = syscall.O_NOFOLLOW
