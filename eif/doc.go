// Package eif writes, reads, validates, measures and signs Enclave Image Files
// (EIF), the boot images of AWS Nitro Enclaves, byte for byte as AWS's
// aws-nitro-enclaves-image-format and nitro-cli do (docs/EIF-FORMAT.md).
//
// Writer is a streaming writer: each section's data flows from an io.Reader
// (or is pushed through an io.Writer) straight to the file while its CRC-32
// and the PCR0/1/2 digests are computed in the same pass; only the 548-byte
// header and the 12-byte section headers are patched afterwards, so no
// section is ever held in memory. Open and File.Verify read an EIF back,
// reporting every structural fault as a *FormatError that names the field and
// its offset, and recompute the CRC, the measurements and the signature.
//
// Subpackages write ramdisks (eif/cpio, eif/ramdisk), open container images
// (eif/source: OCI layout, OCI or docker-save tarball, registry) and
// assemble a bootable EIF from them (eif/build); eif/s3 moves EIFs to and
// from S3. The package imports nothing from Kubernetes or containerd and
// logs nothing.
package eif
