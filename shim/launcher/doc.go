// Package launcher is the host-side process that runs one enclave container
// for containerd-shim-nitro-v1. The shim starts one launcher per enclave
// container at Create, places it in the container's cgroup (so the
// container's cpu/memory limits are the launcher's) and records its pid in
// the bundle; the launcher then:
//
//  1. reads its Spec (written by the shim into the bundle),
//  2. opens containerd's stdio FIFOs and reports "ready" on the ready pipe,
//  3. waits for the start byte on the start pipe (the shim's Start),
//  4. binds every forwarded TCP port inside the Pod's network namespace,
//     boots the enclave through the configured backend and starts the app
//     over the agent channel (enclave.Start),
//  5. copies the app's stdout/stderr into the FIFOs, forwards SIGTERM/SIGINT
//     to the app, runs the shim's execs in the enclave (ExecSocket: the
//     agent's exec streams), and exits with the app's exit status.
//
// To the shim the launcher is the container's init process: its pid is the
// task pid, its exit is the task exit. The enclave record written next to the
// Spec lets `containerd-shim-nitro-v1 delete` terminate a Nitro enclave that
// outlived a crashed shim and launcher.
package launcher
