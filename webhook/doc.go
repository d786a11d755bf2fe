// Package webhook is nitropod's admission webhook: it converts a Pod written
// for Anjuna Nitro Kubernetes into one that the scheduler, the kubelet and the
// nitro runtime understand, and refuses, with a message that says why and how
// to fix it, a Pod that cannot run in an enclave (docs/ARCHITECTURE.md §1, §3).
//
// The conversion is the plain function [Convert] over a corev1.Pod; the HTTP
// side ([Handler], [Run]) only decodes AdmissionReview v1, calls Convert and
// answers with a JSONPatch computed from the difference.
//
// # What Convert does to a managed Pod
//
// A Pod is managed when its label nitro.k8s.anjuna.io/managed is "yes"; any
// other Pod is returned unchanged (a different value of the label gets a
// warning, because it usually is a typo that would run the Pod outside an
// enclave).
//
//   - Every app container (spec.containers) becomes one enclave. Its
//     limits.cpu (an even integer ≥ 2) and limits.memory (≥ 64Mi) size the
//     enclave; they are replaced in requests and limits by
//     nitropod.io/enclave-cpu (vCPUs), nitropod.io/enclave-memory (memory in
//     blocks of Config.MemoryBlockMiB, rounded up) and nitropod.io/enclave (1).
//     The container's cpu/memory become the launcher annotations' values
//     (requests = limits), or are removed when the annotations are absent.
//     Other resources (ephemeral-storage, …) are kept.
//   - A container whose limits already hold nitropod.io/enclave-cpu is taken
//     as converted (or written in nitropod's own form): its enclave size comes
//     from nitropod.io/enclave-cpu and nitropod.io/enclave-memory. This is
//     what makes Convert idempotent: Convert(Convert(p)) == Convert(p).
//   - Init containers, sidecars included, are not enclaves: they run through
//     runc in the Pod sandbox, unchanged, and the Pod gets a warning saying so.
//     A Pod with more app containers than Config.MaxEnclaves (the enclave
//     slots of a node) is refused, since it could never be scheduled. App
//     containers that another webhook injects (service-mesh sidecars) are app
//     containers too, and are converted or refused on reinvocation: keep
//     managed Pods out of such injection, or inject init-container sidecars.
//   - spec.runtimeClassName becomes Config.RuntimeClassName; a Pod that names
//     another RuntimeClass is refused.
//   - The Secret volume of anjuna-license is mounted read-only at
//     nitropod.LicenseDir in every app container (whatever mountPath the user
//     wrote; the mount is added where missing), so the licence file is
//     nitropod.LicensePath. A managed Pod without that volume is refused
//     unless Config.LicenseOptional.
//   - nitro.k8s.anjuna.io/imageLocation must be s3://bucket/key; when set the
//     Pod may have one app container only, and a warning says its image is
//     ignored.
//   - ANJ_ENCLAVE_DEBUG_MODE "yes" selects a debug enclave; any other value
//     gets a warning that the enclave runs in production mode.
//
// # The nitropod.io/enclaves annotation
//
// Convert records every app container's enclave in the Pod annotation
// nitropod.EnclavesAnnotation, a JSON object keyed by container name:
//
//	{"nginx-pod":{"cpu":2,"memoryMiB":2048,"ports":[80],"debug":true}}
//
// cpu is the vCPU count, memoryMiB the enclave memory after rounding up to
// whole blocks, ports the container's TCP containerPorts in spec order (no
// duplicates; omitted when none), udpPorts its UDP containerPorts (the same
// way; the launcher publishes them on the Pod IP), debug true for a debug enclave (omitted
// otherwise). A container that is not a key runs outside an enclave. The shim
// reads it from the OCI spec's annotations with [contract.ParseEnclaves].
//
// # The nitropod.io/delivery annotation
//
// Convert also records, per enclave container, where its env comes from and
// which volumes it mounts (nitropod.DeliveryAnnotation,
// [contract.ContainerDelivery]): the env names written literally (measured),
// those from valueFrom or with $(VAR) references (delivered at start), the
// envFrom prefixes, and the secret, configMap, downwardAPI, projected and
// emptyDir mounts. The shim splits the container's OCI env with
// [contract.SplitEnv] and records [contract.PolicyFor] in the EIF. Any other
// volume type mounted into an enclave container is refused, naming the
// volume; the licence volume is read by the shim on the node and is left
// out.
package webhook
