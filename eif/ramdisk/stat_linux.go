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
	rdev := st.Rdev
	return statT{
		uid: st.Uid, gid: st.Gid, nlink: uint32(st.Nlink),
		dev: st.Dev, ino: st.Ino,
		rdevMajor: unix.Major(rdev), rdevMin: unix.Minor(rdev),
		mode: st.Mode,
	}, true
}

const openNoFollow = syscall.O_NOFOLLOW
