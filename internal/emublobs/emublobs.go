// Package emublobs locates and prepares the emulation blob set: the
// directory of kernel (bzImage), kernel command line (cmdline) and virtio
// modules (NAME.ko, modules.order) that `nitropod run` and `nitropod build`
// put into emulated-enclave EIFs. It is made from Debian's kernel package,
// pinned by version and sha256, exactly as hack/emu-kernel.sh makes
// _output/blobs/emu in the repository; an installed nitropod prepares it with
// `nitropod blobs prepare` without the repository.
//
// Where the blob set is looked for, first match wins:
//
//  1. the --blobs flag;
//  2. $NITROPOD_BLOBS;
//  3. $XDG_DATA_HOME/nitropod/blobs/emu (default ~/.local/share/nitropod/blobs/emu),
//     where `nitropod blobs prepare` writes;
//  4. /usr/local/share/nitropod/blobs/emu, the system-wide place
//     (`nitropod blobs prepare --system`, as root).
//
// Without any, (3) is named, with the command that prepares it.
package emublobs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// EnvDir overrides the blob set directory.
const EnvDir = "NITROPOD_BLOBS"

// PrepareCommand makes the blob set at its standard place.
const PrepareCommand = "nitropod blobs prepare"

// SystemDir is the system-wide blob set.
const SystemDir = "/usr/local/share/nitropod/blobs/emu"

// The pinned kernel package and what is taken from it: the same values as
// hack/emu-kernel.sh (a test keeps them equal), so both make byte-identical
// blob sets and accept each other's as up to date.
//
// tsc=reliable in Cmdline: under TCG with more than one vCPU the kernel
// finds the TSCs unsynchronized and falls back to the jiffies clocksource,
// which loses time whenever QEMU's vCPU thread is starved on a busy host
// (seconds within a minute on two shared cores). TCG's TSC follows the
// host's own, so declaring it reliable keeps the guest's clock in step and
// lets init's clock sync (enclave/initproc) hold it to the host's.
const (
	Package = "linux-image-6.1.0-56-amd64"
	Version = "6.1.192-2"
	SHA256  = "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1"
	Cmdline = "console=ttyS0 panic=-1 reboot=t tsc_early_khz=2600000 tsc=reliable quiet"
)

// Modules are the modules shipped; their load order (modules.order) follows
// their depends= fields.
var Modules = []string{"virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_mmio", "virtio_console", "fuse", "cuse", "tun"}

// UserDir is the per-user blob set: $XDG_DATA_HOME/nitropod/blobs/emu, or
// ~/.local/share/nitropod/blobs/emu.
func UserDir() string {
	base := os.Getenv("XDG_DATA_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil || home == "" {
			return ""
		}
		base = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(base, "nitropod", "blobs", "emu")
}

// Default is the blob set to use when no flag names one: $NITROPOD_BLOBS;
// else UserDir or SystemDir, whichever holds a kernel first; else UserDir.
func Default() string {
	if d := os.Getenv(EnvDir); d != "" {
		return d
	}
	user := UserDir()
	for _, d := range []string{user, SystemDir} {
		if d != "" && present(d) {
			return d
		}
	}
	if user == "" {
		return SystemDir
	}
	return user
}

func present(dir string) bool {
	fi, err := os.Stat(filepath.Join(dir, "bzImage"))
	return err == nil && fi.Mode().IsRegular()
}

// Check returns an error naming the command that prepares dir when it holds
// no blob set.
func Check(dir string) error {
	if present(dir) {
		return nil
	}
	if dir == UserDir() {
		return fmt.Errorf("no emulation blob set in %s: run `%s` to make it from Debian's kernel package (or pass --blobs DIR / set %s)", dir, PrepareCommand, EnvDir)
	}
	return fmt.Errorf("no emulation blob set in %s: run `%s --dir %s` to make it from Debian's kernel package (or pass another --blobs DIR / set %s)", dir, PrepareCommand, dir, EnvDir)
}

// Options configures Prepare. Zero values take the pins above, overridden
// by $NITROPOD_EMU_KERNEL_PKG, _VERSION, _SHA256 and _STRICT like the script.
type Options struct {
	// Dir is the blob set to write (default UserDir).
	Dir string
	// CacheDir keeps the downloaded package ($NITROPOD_CACHE, else
	// $XDG_CACHE_HOME/nitropod, else ~/.cache/nitropod).
	CacheDir string
	// Package, Version, SHA256 pin the kernel package.
	Package, Version, SHA256 string
	// Strict fails when the pinned version cannot be downloaded instead of
	// using the kernel linux-image-amd64 depends on now.
	Strict bool
	// Log gets progress lines; Warn warnings (default: none).
	Log, Warn func(string)
}

func (o *Options) defaults() error {
	env := func(v *string, name, def string) {
		if *v == "" {
			*v = os.Getenv(name)
		}
		if *v == "" {
			*v = def
		}
	}
	env(&o.Package, "NITROPOD_EMU_KERNEL_PKG", Package)
	env(&o.Version, "NITROPOD_EMU_KERNEL_VERSION", Version)
	env(&o.SHA256, "NITROPOD_EMU_KERNEL_SHA256", SHA256)
	if os.Getenv("NITROPOD_EMU_KERNEL_STRICT") == "1" {
		o.Strict = true
	}
	if o.Dir == "" {
		o.Dir = UserDir()
	}
	if o.Dir == "" {
		return errors.New("no home directory for the blob set: pass --dir")
	}
	if o.CacheDir == "" {
		o.CacheDir = os.Getenv("NITROPOD_CACHE")
	}
	if o.CacheDir == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return fmt.Errorf("no cache directory for the kernel package: set NITROPOD_CACHE: %w", err)
			}
			base = filepath.Join(home, ".cache")
		}
		o.CacheDir = filepath.Join(base, "nitropod")
	}
	if o.Log == nil {
		o.Log = func(string) {}
	}
	if o.Warn == nil {
		o.Warn = func(string) {}
	}
	return nil
}

func stamp(pkg, version, sum string) string {
	parts := []string{pkg}
	if version != "" {
		parts = append(parts, version)
	}
	return strings.Join(append(parts, sum, Cmdline, strings.Join(Modules, " ")), " ")
}

// Result says what Prepare did.
type Result struct {
	Dir string
	// Package is the kernel package file used.
	Package string
	// UpToDate is true when Dir already held this blob set.
	UpToDate bool
}

// Prepare makes the blob set in o.Dir from the pinned Debian kernel package
// (downloaded with apt-get once into the cache and verified by sha256;
// unpacked with dpkg-deb). A blob set already made from the same pins is
// left alone. The new set replaces the old one only once it is complete.
func Prepare(ctx context.Context, o Options) (Result, error) {
	if err := o.defaults(); err != nil {
		return Result{}, err
	}
	res := Result{Dir: o.Dir}
	want := stamp(o.Package, o.Version, o.SHA256)
	if b, err := os.ReadFile(filepath.Join(o.Dir, ".stamp")); err == nil && strings.TrimSpace(string(b)) == want && present(o.Dir) {
		res.UpToDate, res.Package = true, o.Package+"_"+o.Version
		return res, nil
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return res, fmt.Errorf("creating the cache %s: %w", o.CacheDir, err)
	}
	deb := filepath.Join(o.CacheDir, o.Package+"_"+o.Version+"_amd64.deb")
	if sum, err := fileSHA256(deb); err != nil || sum != o.SHA256 {
		var err error
		if deb, want, err = download(ctx, &o); err != nil {
			return res, err
		}
	}
	res.Package = filepath.Base(deb)
	if err := build(ctx, &o, deb, want); err != nil {
		return res, err
	}
	return res, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func command(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("%s is needed to prepare the blob set (a Debian or Ubuntu tool): %w", name, err)
		}
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// download fetches the pinned package into the cache (or, when Debian has
// replaced it and o.Strict is off, the kernel linux-image-amd64 depends on,
// with a warning) and returns its path and the blob set's stamp.
func download(ctx context.Context, o *Options) (string, string, error) {
	o.Log(fmt.Sprintf("downloading %s=%s", o.Package, o.Version))
	tmp, err := os.MkdirTemp(o.CacheDir, "download.")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	// apt's unprivileged download user writes here.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", "", err
	}
	pkg, sum, st := o.Package, o.SHA256, stamp(o.Package, o.Version, o.SHA256)
	if _, err := command(ctx, tmp, "apt-get", "download", o.Package+"="+o.Version); err != nil {
		out, _ := command(ctx, "", "apt-cache", "depends", "linux-image-amd64")
		dep := ""
		for _, l := range strings.Split(string(out), "\n") {
			if d, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: "); ok {
				dep = strings.TrimSpace(d)
				break
			}
		}
		fail := fmt.Errorf("cannot download the pinned %s=%s (run apt-get update; Debian may have replaced it; set NITROPOD_EMU_KERNEL_PKG, _VERSION and _SHA256 to another): %w", o.Package, o.Version, err)
		if o.Strict || dep == "" {
			return "", "", fail
		}
		if _, err := command(ctx, tmp, "apt-get", "download", dep); err != nil {
			return "", "", errors.Join(fail, err)
		}
		pkg, sum = dep, ""
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", "", fmt.Errorf("apt-get download of %s left %d packages, want one", pkg, len(debs))
	}
	got, err := fileSHA256(debs[0])
	if err != nil {
		return "", "", err
	}
	if sum == "" {
		// apt has verified it against the archive's signatures.
		sum = got
		st = stamp(pkg, "", sum)
		o.Warn(fmt.Sprintf("WARNING: using %s instead of the pinned %s %s", filepath.Base(debs[0]), o.Package, o.Version))
	} else if got != sum {
		return "", "", fmt.Errorf("%s does not match the pinned sha256 %s (got %s)", filepath.Base(debs[0]), sum, got)
	}
	dst := filepath.Join(o.CacheDir, filepath.Base(debs[0]))
	if pkg == o.Package {
		dst = filepath.Join(o.CacheDir, o.Package+"_"+o.Version+"_amd64.deb")
	}
	if err := os.Rename(debs[0], dst); err != nil {
		return "", "", err
	}
	return dst, st, nil
}

// build unpacks deb and writes the blob set to o.Dir (through o.Dir.tmp).
func build(ctx context.Context, o *Options, deb, st string) error {
	o.Log("unpacking " + filepath.Base(deb))
	work, err := os.MkdirTemp("", "nitropod-blobs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	x := filepath.Join(work, "x")
	if _, err := command(ctx, "", "dpkg-deb", "-x", deb, x); err != nil {
		return err
	}
	stage := filepath.Clean(o.Dir) + ".tmp"
	if err := os.RemoveAll(stage); err != nil {
		return err
	}
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", stage, err)
	}
	kernels, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return fmt.Errorf("%s holds %d kernels (boot/vmlinuz-*), want one", filepath.Base(deb), len(kernels))
	}
	if err := copyFile(kernels[0], filepath.Join(stage, "bzImage")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "cmdline"), []byte(Cmdline+"\n"), 0o644); err != nil {
		return err
	}
	kdirs, _ := filepath.Glob(filepath.Join(x, "lib", "modules", "*", "kernel"))
	if len(kdirs) != 1 {
		return fmt.Errorf("%s holds %d module trees (lib/modules/*/kernel), want one", filepath.Base(deb), len(kdirs))
	}
	found, err := findModules(kdirs[0])
	if err != nil {
		return err
	}
	deps := map[string][]string{}
	for _, m := range Modules {
		src := found[m]
		if src == "" {
			return fmt.Errorf("module %s not found in %s", m, filepath.Base(deb))
		}
		dst := filepath.Join(stage, m+".ko")
		if err := decompress(ctx, src, dst); err != nil {
			return err
		}
		b, err := os.ReadFile(dst)
		if err != nil {
			return err
		}
		deps[m] = depends(b)
		for _, d := range deps[m] {
			if !contains(Modules, d) {
				return fmt.Errorf("module %s depends on %s, which is not in the module list", m, d)
			}
		}
	}
	order, err := loadOrder(Modules, deps)
	if err != nil {
		return err
	}
	var ob strings.Builder
	for _, m := range order {
		ob.WriteString(m + ".ko\n")
	}
	if err := os.WriteFile(filepath.Join(stage, "modules.order"), []byte(ob.String()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, ".stamp"), []byte(st+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.RemoveAll(o.Dir); err != nil {
		return err
	}
	if err := os.Rename(stage, o.Dir); err != nil {
		return fmt.Errorf("moving the blob set into place: %w", err)
	}
	return nil
}

// findModules maps each wanted module name to its file (.ko, .ko.xz or
// .ko.zst) under kdir.
func findModules(kdir string) (map[string]string, error) {
	found := map[string]string{}
	err := filepath.WalkDir(kdir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := d.Name()
		for _, ext := range []string{".ko", ".ko.xz", ".ko.zst"} {
			if m, ok := strings.CutSuffix(name, ext); ok && contains(Modules, m) && found[m] == "" {
				found[m] = p
			}
		}
		return nil
	})
	return found, err
}

func decompress(ctx context.Context, src, dst string) error {
	var tool []string
	switch {
	case strings.HasSuffix(src, ".xz"):
		tool = []string{"xz", "-dc", src}
	case strings.HasSuffix(src, ".zst"):
		tool = []string{"zstd", "-qdc", src}
	default:
		return copyFile(src, dst)
	}
	out, err := command(ctx, "", tool[0], tool[1:]...)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, out, 0o644)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s: %w", src, err)
	}
	return out.Close()
}

// depends is a module's depends= field (from its .modinfo strings).
func depends(ko []byte) []string {
	for _, f := range bytes.FieldsFunc(ko, func(r rune) bool { return r == 0 || r == '\n' }) {
		if v, ok := bytes.CutPrefix(f, []byte("depends=")); ok {
			var out []string
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					out = append(out, d)
				}
			}
			return out
		}
	}
	return nil
}

// loadOrder sorts modules so that each comes after its dependencies,
// keeping the list's order otherwise (as hack/emu-kernel.sh does).
func loadOrder(mods []string, deps map[string][]string) ([]string, error) {
	loaded := map[string]bool{}
	var order []string
	for range mods {
		for _, m := range mods {
			if loaded[m] {
				continue
			}
			ready := true
			for _, d := range deps[m] {
				if !loaded[d] {
					ready = false
				}
			}
			if ready {
				loaded[m] = true
				order = append(order, m)
			}
		}
	}
	if len(order) != len(mods) {
		return nil, fmt.Errorf("circular module dependencies among %s", strings.Join(mods, " "))
	}
	return order, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
