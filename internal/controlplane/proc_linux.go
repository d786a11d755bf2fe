package controlplane

import "syscall"

// sysProcAttr makes a child die with its parent, even if that is killed,
// and puts it in its own process group (a Ctrl-C of the demo reaches the
// parent, which stops the child in order).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
