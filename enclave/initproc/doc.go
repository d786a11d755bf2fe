// Package initproc is nitropod-init, PID 1 inside every enclave. From the
// bootstrap ramdisk it mounts devtmpfs, loads the blob set's kernel modules
// in order, sends the Nitro heartbeat and opens the agent channel (vsock on
// Nitro, dialled out to the launcher, never listened for; the virtio-serial
// port in emulation: see pickTransport and the agent package doc); then it
// switches root into the
// image's filesystem, mounts /proc /sys /dev/pts /dev/shm /run /tmp, brings up
// loopback, sets the hostname and /etc/hosts, and, when the host asks, runs
// the measured process (eif/ramdisk.Process) with its argv, env, working
// directory and credentials, resolving argv[0] on PATH like AWS's init. It
// reaps every zombie (one reaper, which hands the app's and each exec's
// status to whoever waits for it), forwards the host's signals to the app,
// runs the host's exec requests that the measured exec policy allows
// (exec_linux.go: with the app's env, cwd, credentials and security
// context, on pipes or a devpts pseudo-terminal), reports the app's exit
// status and powers the enclave off. A failure before the app
// runs is reported over the channel, when there is one, and to the console.
//
// The Linux-only parts need PID 1 in a VM and are tested by booting real
// QEMU (enclave/qemu); the plain functions here are unit-tested.
package initproc
