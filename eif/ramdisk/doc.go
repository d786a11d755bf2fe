// Package ramdisk builds the two kinds of ramdisk an nitropod EIF holds, as
// deterministic cpio newc archives (the layout is in process.go):
//
//   - the bootstrap ramdisk (WriteBootstrap): nitropod's init and the blob
//     set's kernel modules;
//   - the customer ramdisk: a container's filesystem under /rootfs plus the
//     process to run, either from an unpacked rootfs directory (WriteDir) or
//     straight from an image's layers (ScanLayers, then Layers.Write), which
//     are flattened with OCI whiteouts in two streaming passes.
//
// Paths from untrusted input never leave the archive root: entries that climb
// out with ".." are refused, absolute names are taken relative to the root,
// and nothing is ever written through a symlink.
package ramdisk
