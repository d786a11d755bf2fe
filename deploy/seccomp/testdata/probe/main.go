// Command probe tries the ways a process can open an AF_VSOCK socket and
// prints one line per try: "<name> ok" or "<name> <errno name>". The seccomp
// profile test runs it in a container under the profile.
package main

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

func report(name string, err error) {
	if err == nil {
		fmt.Println(name, "ok")
		return
	}
	if en, ok := err.(unix.Errno); ok {
		fmt.Println(name, unix.ErrnoName(en))
		return
	}
	fmt.Println(name, err)
}

func main() {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.Close(fd)
	}
	report("socket-vsock", err)
	fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.Close(fd)
	}
	report("socket-inet", err)
	fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.Close(fd)
	}
	report("socket-unix", err)
	// io_uring can create sockets (IORING_OP_SOCKET) without socket(2).
	var params [120]byte
	r, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params[0])), 0)
	if e == 0 {
		unix.Close(int(r))
		report("io_uring_setup", nil)
	} else {
		report("io_uring_setup", e)
	}
}
