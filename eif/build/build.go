// Package build assembles bootable EIFs: the blob set's kernel and cmdline,
// a bootstrap ramdisk with nitropod's init and the blob set's modules, and a
// customer ramdisk made from a container (an unpacked rootfs plus a process,
// or a go-containerregistry v1.Image). Everything streams into the EIF in one
// pass; the same inputs (with the same build time) give the same bytes.
package build

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/ramdisk"
)

// Tool is the BuildTool written in the metadata section.
const Tool = "nitropod"

// SourceDateEpochEnv fixes the metadata build time for reproducible builds.
const SourceDateEpochEnv = "SOURCE_DATE_EPOCH"

// BlobSet is a directory with a kernel, its default command line and the
// kernel modules init loads at boot (docs/ARCHITECTURE.md §6): `bzImage`,
// `cmdline`, `*.ko`, and optionally `modules.order` (module file names, one
// per line, in load order; without it the modules load in lexical order).
// AWS's /usr/share/nitro_enclaves/blobs (bzImage, cmdline, nsm.ko) is one.
type BlobSet struct {
	Dir     string
	Kernel  string   // path of bzImage
	Cmdline string   // default kernel command line
	Modules []string // paths, in load order
}

// LoadBlobSet reads the blob set in dir.
func LoadBlobSet(dir string) (*BlobSet, error) {
	b := &BlobSet{Dir: dir, Kernel: filepath.Join(dir, "bzImage")}
	if fi, err := os.Stat(b.Kernel); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("loading blob set %s: no kernel file bzImage (a blob set holds bzImage, cmdline and *.ko; make emu-kernel makes one)", dir)
	}
	cl, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return nil, fmt.Errorf("loading blob set %s: %w", dir, err)
	}
	b.Cmdline = eif.CleanCmdline(strings.TrimSpace(string(cl)))
	order, err := os.ReadFile(filepath.Join(dir, "modules.order"))
	switch {
	case err == nil:
		for _, line := range strings.Split(string(order), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if line != filepath.Base(line) {
				return nil, fmt.Errorf("loading blob set %s: modules.order names %q, want a file name in the blob set", dir, line)
			}
			p := filepath.Join(dir, line)
			if _, err := os.Stat(p); err != nil {
				return nil, fmt.Errorf("loading blob set %s: modules.order: %w", dir, err)
			}
			b.Modules = append(b.Modules, p)
		}
	case errors.Is(err, os.ErrNotExist):
		mods, err := filepath.Glob(filepath.Join(dir, "*.ko"))
		if err != nil {
			return nil, err
		}
		sort.Strings(mods)
		b.Modules = mods
	default:
		return nil, fmt.Errorf("loading blob set %s: %w", dir, err)
	}
	return b, nil
}

// Options configure a build.
type Options struct {
	// Blobs is the blob set directory (required).
	Blobs string
	// Init is the init binary for the bootstrap ramdisk (required).
	Init string
	// Cmdline replaces the blob set's kernel command line when set.
	Cmdline string
	// DebugCmdline makes the kernel log to the console (drops `quiet`,
	// ensures `console=ttyS0`), for debug enclaves.
	DebugCmdline bool
	// Name and Version go into the metadata (ImageName, ImageVersion).
	Name, Version string
	// CustomMetadata is user JSON for the metadata section (≤ 4096 bytes).
	CustomMetadata json.RawMessage
	// ToolVersion is the metadata's BuildToolVersion ("dev" when empty).
	ToolVersion string
	// Signer signs the EIF when set.
	Signer *eif.Signer
	// BuildTime is the metadata's build time; zero means $SOURCE_DATE_EPOCH
	// when set, else now (TimeFromEnv).
	BuildTime time.Time
}

// TimeFromEnv returns the time $SOURCE_DATE_EPOCH names, or now.
func TimeFromEnv() (time.Time, error) {
	if s := os.Getenv(SourceDateEpochEnv); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s=%q is not a number of seconds since the epoch", SourceDateEpochEnv, s)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	return time.Now().UTC(), nil
}

// DebugCmdline returns cmdline with kernel messages on the console.
func DebugCmdline(cmdline string) string {
	var out []string
	console := false
	for _, f := range strings.Fields(cmdline) {
		if f == "quiet" {
			continue
		}
		console = console || strings.HasPrefix(f, "console=")
		out = append(out, f)
	}
	if !console {
		out = append(out, "console=ttyS0")
	}
	return strings.Join(out, " ")
}

// customer writes a customer ramdisk.
type customer func(w io.Writer) error

// write assembles the EIF: kernel, cmdline, metadata, bootstrap ramdisk,
// customer ramdisk, signature.
func write(out io.WriteSeeker, opts Options, dockerInfo json.RawMessage, cust customer) (eif.Measurements, error) {
	if opts.Blobs == "" || opts.Init == "" {
		return eif.Measurements{}, errors.New("building eif: a blob set directory and an init binary are required")
	}
	blobs, err := LoadBlobSet(opts.Blobs)
	if err != nil {
		return eif.Measurements{}, err
	}
	cmdline := blobs.Cmdline
	if opts.Cmdline != "" {
		cmdline = eif.CleanCmdline(opts.Cmdline)
	}
	if opts.DebugCmdline {
		cmdline = DebugCmdline(cmdline)
	}
	bt := opts.BuildTime
	if bt.IsZero() {
		if bt, err = TimeFromEnv(); err != nil {
			return eif.Measurements{}, err
		}
	}
	osName, kernelVersion := blobs.OSAndKernel()
	tv := opts.ToolVersion
	if tv == "" {
		tv = "dev"
	}
	md := &eif.Metadata{
		ImageName: opts.Name, ImageVersion: opts.Version,
		Build: eif.BuildMetadata{
			BuildTime: eif.FormatBuildTime(bt), BuildTool: Tool, BuildToolVersion: tv,
			OperatingSystem: osName, KernelVersion: kernelVersion,
		},
		DockerInfo: dockerInfo, CustomMetadata: opts.CustomMetadata,
	}
	mdJSON, err := md.MarshalJSON()
	if err != nil {
		return eif.Measurements{}, err
	}
	kf, err := os.Open(blobs.Kernel)
	if err != nil {
		return eif.Measurements{}, fmt.Errorf("building eif: %w", err)
	}
	defer kf.Close()

	w, err := eif.NewWriter(out, eif.WriterOptions{Signer: opts.Signer})
	if err != nil {
		return eif.Measurements{}, err
	}
	fail := func(err error) (eif.Measurements, error) {
		w.Close() // stops the digests; the first error is the one returned
		return eif.Measurements{}, err
	}
	if _, err := w.WriteSection(eif.SectionKernel, kf); err != nil {
		return fail(err)
	}
	if _, err := w.WriteSection(eif.SectionCmdline, strings.NewReader(cmdline)); err != nil {
		return fail(err)
	}
	if _, err := w.WriteSection(eif.SectionMetadata, bytes.NewReader(mdJSON)); err != nil {
		return fail(err)
	}
	sw, err := w.Create(eif.SectionRamdisk)
	if err != nil {
		return fail(err)
	}
	if err := ramdisk.WriteBootstrap(sw, opts.Init, blobs.Modules); err != nil {
		return fail(err)
	}
	if err := sw.Close(); err != nil {
		return fail(err)
	}
	if sw, err = w.Create(eif.SectionRamdisk); err != nil {
		return fail(err)
	}
	if err := cust(sw); err != nil {
		return fail(err)
	}
	if err := sw.Close(); err != nil {
		return fail(err)
	}
	return w.Close()
}

// FromRootfs builds an EIF from an unpacked root filesystem (e.g. a
// container's mounted rootfs) and the process to run, writing it to out and
// returning its measurements.
func FromRootfs(out io.WriteSeeker, rootfs string, proc ramdisk.Process, opts Options) (eif.Measurements, error) {
	m, err := write(out, opts, nil, func(w io.Writer) error {
		return ramdisk.WriteDir(w, rootfs, proc)
	})
	if err != nil {
		return m, fmt.Errorf("building eif from %s: %w", rootfs, err)
	}
	return m, nil
}

// OSAndKernel returns the metadata's OperatingSystem and KernelVersion as
// AWS's builder derives them from the kernel config next to the kernel
// (bzImage.config, third line "# Linux/x86 4.14.177-… Kernel Configuration"
// → "Linux", "4.14.177"); without it, "Linux" and the bzImage's version.
func (b *BlobSet) OSAndKernel() (osName, kernel string) {
	osName, kernel = "Linux", KernelVersion(b.Kernel)
	cfg, err := os.ReadFile(b.Kernel + ".config")
	if err != nil {
		return osName, kernel
	}
	lines := strings.SplitN(string(cfg), "\n", 4)
	if len(lines) < 3 {
		return osName, kernel
	}
	words := strings.FieldsFunc(lines[2], func(r rune) bool { return r == ' ' || r == '/' || r == '-' })
	// FieldsFunc drops empty words; AWS's split keeps them, but the line
	// starts with "# " so the words line up: "#", OS, arch, version.
	if len(words) > 3 {
		osName, kernel = words[1], words[3]
	}
	return osName, kernel
}

// KernelVersion reads the version string of an x86 bzImage (boot protocol
// ≥ 2.00: the kernel_version field of the setup header), or "" when the file
// is not a bzImage.
func KernelVersion(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var hdr [0x210]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil || string(hdr[0x202:0x206]) != "HdrS" {
		return ""
	}
	off := binary.LittleEndian.Uint16(hdr[0x20e:])
	if off == 0 {
		return ""
	}
	var v [128]byte
	n, _ := f.ReadAt(v[:], int64(off)+0x200)
	s := string(v[:n])
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	if i := strings.IndexByte(s, ' '); i >= 0 {
		s = s[:i]
	}
	return s
}
