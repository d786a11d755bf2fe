// Package deviceplugin is nitropod's kubelet device plugin. It discovers the
// Nitro Enclaves CPU pool and the hugepage memory reserved for enclaves (from
// an injectable sysfs root, so tests use fake trees), optionally sets the pool
// up like AWS's nitro-enclaves-allocator, and advertises three extended
// resources over the kubelet device-plugin API v1beta1:
//
//   - nitropod.io/enclave-cpu: one device per pool CPU, with its NUMA node;
//   - nitropod.io/enclave-memory: one device per memory block (default 64 MiB,
//     never smaller than the hugepage size in use), with its NUMA node;
//   - nitropod.io/enclave: enclave slots (default 4).
//
// Allocate hands the shim the chosen CPUs, memory and slot through the
// NITROPOD_* environment variables (docs/ARCHITECTURE.md §3 and §8).
//
// The decisions (which devices exist, which are healthy, which CPUs and blocks
// to prefer, whether an allocation is acceptable) are plain functions over
// plain types: Discover, Advertise, PreferCPUs, PreferMemory, AllocateCPUs.
// Only server.go and register.go speak the kubelet gRPC API; Run wires it all
// together for cmd/nitropod-device-plugin.
package deviceplugin
