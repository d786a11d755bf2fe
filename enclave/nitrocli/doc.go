// Package nitrocli is the enclave.Backend for AWS Nitro hosts: it drives
// AWS's `nitro-cli` (run-enclave with --cpu-ids and --memory,
// describe-enclaves, terminate-enclave, console in debug mode) and dials the
// agent channel over AF_VSOCK to the enclave's CID.
//
// UNTESTED ON HARDWARE: no Nitro host is available to this project's CI. The
// command lines it runs and its parsing of nitro-cli's JSON output are unit
// tested against outputs in testdata/ that follow nitro-cli's source
// (src/common/json_output.rs, v1.5: pretty-printed JSON on stdout, progress
// and "[ Exx ] ..." errors on stderr); the process runner in those tests is a
// fake, because no real nitro-cli can run here.
package nitrocli
