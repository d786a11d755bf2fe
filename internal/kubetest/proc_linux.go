package kubetest

import "syscall"

// sysProcAttr makes a child die with the test binary, even if it is killed.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
