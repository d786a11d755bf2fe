// Package enclave runs Enclave Image Files: the Backend interface with its
// implementations (enclave/qemu for emulation, enclave/nitrocli on Nitro
// hosts), and the host side of the agent channel (enclave/agent) between the
// host and nitropod-init (enclave/initproc) inside the enclave, which carries
// control messages, stdio, signals, the exit status and forwarded TCP ports.
//
// # Running an app
//
// Run boots an EIF and runs its measured process to the end:
//
//	b, _ := qemu.New(qemu.Config{WorkDir: dir})          // or nitrocli.New(…)
//	st, err := enclave.Run(ctx, b, enclave.Request{
//		Name: id, EIFPath: "app.eif", CPUs: 2, MemoryMiB: 512,
//	}, enclave.RunIO{
//		Stdout: stdout, Stderr: stderr,                     // nil discards
//		Publish: []enclave.PortMapping{{HostAddr: "127.0.0.1:8080", EnclavePort: 80}},
//		Signals: sigs,                                      // forwarded to the app
//		Ready:   func() { /* the app runs */ },
//	})
//	// st.Code is the app's exit code (128+signal when a signal killed it,
//	// 137 when the enclave was terminated); st.Signal the signal or 0.
//
// Start, Session.Signal, Session.Wait and Session.Terminate split the same
// steps for callers that start and stop apps from separate requests (the
// containerd shim's launcher: Create/Start → Start, Kill → Signal, Delete →
// Terminate). Start returns once the app runs; on error nothing is left
// running. Run terminates the enclave when ctx ends, on SIGKILL, on a second
// SIGTERM/SIGINT, or when RunIO.GracePeriod passes after the first one.
//
// Errors say where it failed: a backend error from Boot (too little memory
// for the EIF, a corrupt EIF, no QEMU), *agent.InitError when init failed
// before the app ran (with its stage, e.g. "starting the app"), or "the
// enclave stopped before its app exited" when it crashed.
package enclave
