// Package nsm is the Nitro Secure Module's request/response API and the
// emulated NSM that nitropod provides in emulation.
//
// # The API
//
// An app talks to the NSM through /dev/nsm with one ioctl, IoctlCmd
// (_IOWR(0x0A, 0, struct nsm_raw)), whose argument holds two iovecs: the
// CBOR request (at most MaxRequest bytes) and a buffer for the CBOR response
// (the NSM library passes MaxResponse bytes); the driver writes the
// response's length back into the second iovec. Requests and responses are
// serde_cbor's encoding of the Request and Response enums of
// aws-nitro-enclaves-nsm-api: a unit variant is a text string
// ("DescribeNSM"), a struct variant a one-entry map from the variant's name
// to a map of its fields ({"DescribePCR": {"index": 0}}), byte vectors are
// byte strings, an error is {"Error": "InvalidIndex"}. DecodeRequest and the
// Response encoders here speak exactly that, so apps built on AWS's library
// (or any NSM client) work unchanged.
//
// # The emulated device
//
// Device is an NSM in software: 32 SHA-384 PCRs, of which 0–15 are locked
// (read-only) from the start as on Nitro and 16–31 can be extended and
// locked by the app; PCR0, PCR1, PCR2 and PCR8 hold the measurements of the
// EIF that booted, PCRs 3–7 and 9–15 are zero (debug-mode enclaves read all
// zeros, as on Nitro). Attestation documents are signed by an
// attestation.Signer of the node's emulation CA. Handle never fails: every
// malformed, oversized or out-of-range request gets the NSM API's error
// response (InvalidArgument, InvalidIndex, ReadOnlyIndex, InputTooLarge, …).
//
// # How the emulated /dev/nsm reaches the host
//
// In the emulated enclave, nitropod-init serves /dev/nsm as a CUSE
// character device (enclave/initproc/nsm_linux.go; the emulation blob set
// ships fuse.ko and cuse.ko, measured in the EIF like every module): the
// kernel hands each ioctl on /dev/nsm to init, which reads the request
// iovec, forwards the request over the agent channel (an "nsm" stream) to
// the host, and writes the response and its length back into the caller's
// memory, so the app sees the real driver's ABI. CUSE was chosen over a
// virtio device (which would need a QEMU change) and over a kernel module
// (which would need building against each kernel): it is a stock module of
// the emulation kernel and keeps the device logic in Go.
//
// The Device itself runs on the host, in the launcher (enclave.Start serves
// the nsm stream with the backend's Device): the emulation CA's key never
// enters the enclave, and the PCRs are the launcher's own measurement of the
// EIF it booted, never values from the guest. This makes an emulated
// document exactly as trustworthy as the node: anyone who controls the node
// can sign anything with its emulation CA. That is why the emulation root's
// subject says "NOT AWS Nitro", why it never chains to AWS's root, and why
// a verifier only accepts it when told to (nitropod attestation verify
// --root). Emulated attestation is for developing and testing attestation
// flows, not for trusting an enclave.
package nsm
