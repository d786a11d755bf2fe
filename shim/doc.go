// Package shim is containerd-shim-nitro-v1, nitropod's containerd shim v2
// (runtime type io.containerd.nitro.v1), built on containerd 1.7's
// runtime/v2/shim: a shim.Manager (NewManager) and a TTRPC task plugin
// registered by this package's init.
//
// # One shim per Pod
//
// `start` derives the shim socket from the io.kubernetes.cri.sandbox-id
// annotation (else the container id), so every container of a Pod reaches
// the same shim, and prints the plain ttrpc address, which containerd 1.6,
// 1.7 and 2.x all accept. Every task RPC is routed by container id.
// Shutdown is ignored while the shim still has containers.
//
// # Two kinds of container
//
// PlanContainer decides from the OCI spec. The pause container, and app
// containers that the webhook left out of the nitropod.io/enclaves
// annotation, go to containerd's own runc task service, which this
// service wraps. Every other container runs as an enclave:
//
//   - Create reads config.json, checks the licence (package license), gets
//     the EIF from the node cache (package eifcache) — filled from S3 for
//     nitro.k8s.anjuna.io/imageLocation (package eif/s3), else built from the
//     rootfs (mounted only for the build) and the process spec (package
//     eif/build) — and starts nitropod-launcher (package shim/launcher) in
//     the container's cgroup, created with the container's cpu/memory/pids
//     limits, which are the launcher limits.
//   - Ports: the TCP ports the webhook recorded, else those the image
//     EXPOSEs (looked up by nitropod-fetch in containerd's image store).
//   - Size: a CRI container's enclave gets exactly the vCPUs and memory the
//     device plugin allocated to it, read from kubelet's pod-resources API
//     (nitropod-fetch pod-devices) and totalled by contract.AllocationFromDevices.
//     Nothing the Pod's author writes sizes an enclave: NITROPOD_* values in
//     its env that disagree with kubelet's record are refused, and the
//     nitropod.io/enclaves annotation gives only ports and debug mode.
//     Containers not created through CRI (ctr run), and every container with
//     [allocation] source = "config", take default_cpus/default_memory_mib.
//   - Start lets the launcher boot the enclave in the Pod's network
//     namespace and returns once init reports that it started the app (the
//     launcher's status pipe says "started"), as runc's start returns once
//     the process was exec'd. A boot or start failure (enclave too small,
//     command not in the image, missing kernel, …) is Start's error with the
//     reason — containerd's CRI records it as the container's StartError,
//     shown by kubectl describe — and the launcher, QEMU and enclave are
//     stopped. TaskStart is published only for a started app, before its
//     TaskExit.
//   - The launcher is the task's init process: its exit (the app's exit
//     status) is the TaskExit; Wait works before Start.
//   - Kill: SIGKILL terminates the enclave (every process of the cgroup,
//     and the Nitro enclave by id); any other signal goes to the launcher,
//     which forwards it to the app.
//   - Delete frees the launcher, the cgroup, any mount and the cache
//     reference. Stats returns the cgroup's metrics; Update changes the
//     launcher limits; Pause, Resume and Checkpoint are refused as not
//     supported for enclave containers.
//   - Exec, and Start, Kill, ResizePty, CloseIO, State, Wait and Delete of
//     an exec id, run a process inside the enclave through the launcher
//     (exec.go, launcher.ExecSocket) and init; a production enclave runs
//     only the commands measured into it (contract.ExecPolicy), and init's
//     refusal is Start's error. TaskExecAdded, TaskExecStarted and the
//     exec's TaskExit carry the exec id.
//
// `delete` (containerd cleaning up after a shim it lost) reads the state
// file the shim wrote into the bundle and kills the launcher, QEMU and the
// enclave, removes the cgroup and unmounts the rootfs.
//
// # Configuration
//
// /etc/nitropod/shim.toml (Config), or the path in the runtime options'
// ConfigPath (CRI: [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nitro.options]),
// or $NITROPOD_SHIM_CONFIG.
package shim
