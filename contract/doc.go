// Package contract holds the rules that more than one nitropod component
// applies to the same data: the nitropod.io/enclaves annotation the webhook
// writes and the shim reads, the kernel's cpu-list syntax the device plugin
// writes and the shim reads, the device IDs the device plugin advertises and
// the shim reads back from kubelet's pod-resources API, the s3:// image
// location the webhook admits and the shim downloads, the enclave memory
// rule, the backend names, and the nitropod.io/delivery annotation with the
// measured/delivered split and the delivery policy that the webhook, the
// shim and the enclave's init all apply.
//
// Each rule is written once, here, and both sides import it, so a value one
// side accepts is never refused by the other. The package imports only the
// standard library and the root package's names, so every component (and
// the small enclave init) can depend on it.
//
// Everything parsed here may come from a Pod author and is treated as
// hostile: inputs are bounded before anything is allocated, and errors name
// the value and what a valid one looks like.
package contract
