//go:build !linux

package ramdisk

import "io/fs"

type statT struct {
	uid, gid, nlink    uint32
	dev, ino           uint64
	rdevMajor, rdevMin uint32
	mode               uint32
}

func statOf(fs.FileInfo) (statT, bool) { return statT{}, false }

const openNoFollow = 0
