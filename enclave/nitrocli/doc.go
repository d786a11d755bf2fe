// Package nitrocli is the enclave.Backend for AWS Nitro hosts: it drives
// AWS's `nitro-cli` (run-enclave with --cpu-ids and --memory,
// describe-enclaves, terminate-enclave, console in debug mode) and serves
// the agent channel over AF_VSOCK.
//
// What every launcher of a node shares (Config.StateDir, the shim's
// run_dir), because nitro-cli's resources are node-wide:
//
//   - Boots are serialised by a flock (BootLockFile): each run-enclave's
//     enclave process binds vsock port 9000 on the parent for the boot
//     heartbeat, so a second concurrent boot fails with E36 ("vsock bind
//     error" in its backtrace). A boot that still loses that port (to a
//     nitro-cli outside nitropod) is retried once.
//   - describe-enclaves runs at most once per PollInterval on the node (a
//     cache under DescribeLockFile), with RUST_LOG=warn: nitro-cli logs each
//     command at info level to /var/log/nitro_enclaves/nitro_enclaves.log.
//   - nitro-cli and the enclave process it detaches run in a node-level
//     cgroup (Config.Cgroup, outside kubepods), where no Pod's hugetlb limit
//     of 0 can starve the enclave's hugepage memory.
//
// A boot that fails or is cancelled leaves no enclave: the enclave process
// boots on after its CLI dies, so the enclave is found by name (the
// container ID) and terminated. The watch acts on describe-enclaves' array
// even when nitro-cli exits non-zero because another enclave's process did
// not answer.
//
// UNTESTED ON HARDWARE: no Nitro host is available to this project's CI.
// The command lines and the parsing of nitro-cli's JSON output are unit
// tested against outputs in testdata/ that follow nitro-cli's source
// (src/common/json_output.rs, v1.5: pretty-printed JSON on stdout, progress
// and "[ Exx ] ..." errors on stderr); the node-wide behaviours above are
// tested by running the backend's real process runner against a FAKE
// nitro-cli (internal/fakenitrocli), whose doc names the v1.5.0 source files
// it models, because no real nitro-cli can run here.
package nitrocli
