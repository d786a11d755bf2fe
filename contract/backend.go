package contract

// Backend names: the shim config's backend, the launcher's, and the CLI's.
const (
	// BackendQEMU boots an emulated enclave under QEMU.
	BackendQEMU = "qemu"
	// BackendNitroCLI boots a Nitro enclave with nitro-cli.
	BackendNitroCLI = "nitro-cli"
)
