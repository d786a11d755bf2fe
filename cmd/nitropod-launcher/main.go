// Command nitropod-launcher runs one enclave container for
// containerd-shim-nitro-v1; see package shim/launcher.
package main

import (
	"os"
	"runtime"

	"github.com/nitropod/nitropod/shim/launcher"
)

// init keeps the main goroutine on the main thread for the whole run, so no
// other goroutine is ever scheduled there. The launcher moves single
// threads into the enclave's cgroup (the thread that forks QEMU); on
// cgroup v1 the process's memory is charged to the main thread's cgroup, so
// the main thread must never be one of them, or the launcher's own memory
// would escape the Pod's limits.
func init() { runtime.LockOSThread() }

func main() { os.Exit(launcher.Main(os.Args[1:])) }
