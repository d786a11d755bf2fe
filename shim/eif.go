package shim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/eifcache"
)

// cacheKeyVersion changes whenever the shim's EIF recipe changes.
const cacheKeyVersion = "nitropod-shim-eif-v1"

// getEIF returns the container's EIF from the node cache, filling it from
// S3 (imageLocation) or by building it from the rootfs and process.
func getEIF(ctx context.Context, cache *eifcache.Cache, r *taskAPI.CreateTaskRequest, spec *specs.Spec, plan Plan, cfg Config) (*eifcache.Entry, error) {
	if plan.ImageLocation != "" {
		return fetchPrebuilt(ctx, cache, spec, plan, cfg)
	}
	rootfs := filepath.Join(r.Bundle, "rootfs")
	key, err := EIFKey(r.Rootfs, rootfs, plan, cfg)
	if err != nil {
		return nil, err
	}
	return cache.Get(ctx, key, func(ctx context.Context, w io.Writer) error {
		log.G(ctx).WithField("id", r.ID).WithField("key", key).Info("building enclave image")
		if len(r.Rootfs) > 0 {
			if err := os.MkdirAll(rootfs, 0o711); err != nil {
				return err
			}
			mounts := toMounts(r.Rootfs)
			if err := mount.All(mounts, rootfs); err != nil {
				return fmt.Errorf("mounting rootfs: %w", err)
			}
			// The EIF holds a copy of the rootfs: the mount is not needed
			// once it is built.
			defer func() {
				if err := unmountRootfs(rootfs); err != nil {
					log.G(ctx).WithError(err).Warn("unmounting rootfs after build")
				}
			}()
		}
		name := spec.Annotations[nitropod.CRIImageName]
		if name == "" {
			name = r.ID
		}
		return buildEIF(ctx, w, rootfs, plan, cfg, name)
	})
}

func toMounts(ms []*types.Mount) []mount.Mount {
	out := make([]mount.Mount, 0, len(ms))
	for _, m := range ms {
		out = append(out, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	return out
}

// EIFKey is the cache key of a container's EIF: everything that goes into
// it. The rootfs is identified by its snapshot mounts (committed snapshot
// directories are immutable, so the same lowerdirs are the same content)
// plus a content walk of any writable layer that is not empty, or of the
// bundle's rootfs directory when containerd passed no mounts.
func EIFKey(mounts []*types.Mount, rootfsDir string, plan Plan, cfg Config) (string, error) {
	var rootID []string
	for _, m := range mounts {
		rootID = append(rootID, "mount", m.Type, m.Source)
		for _, o := range m.Options {
			k, v, _ := strings.Cut(o, "=")
			switch k {
			case "upperdir":
				h, empty, err := treeHash(v)
				if err != nil {
					return "", fmt.Errorf("identifying rootfs: %w", err)
				}
				if !empty {
					rootID = append(rootID, "upper", h)
				}
			case "workdir":
			default:
				rootID = append(rootID, o)
			}
		}
	}
	if len(mounts) == 0 {
		h, _, err := treeHash(rootfsDir)
		if err != nil {
			return "", fmt.Errorf("identifying rootfs: %w", err)
		}
		rootID = append(rootID, "dir", h)
	}
	proc, err := json.Marshal(plan.Process)
	if err != nil {
		return "", err
	}
	blobs, err := filesID(cfg.BlobsDir)
	if err != nil {
		return "", fmt.Errorf("identifying blob set %s: %w (set blobs_dir in the shim config)", cfg.BlobsDir, err)
	}
	initID, err := filesID(cfg.InitPath)
	if err != nil {
		return "", fmt.Errorf("identifying init %s: %w (set init_path in the shim config)", cfg.InitPath, err)
	}
	debug := "production"
	if plan.Debug {
		debug = "debug" // a debug EIF has a console-logging kernel cmdline
	}
	return eifcache.Key(cacheKeyVersion, builderVersion, strings.Join(rootID, "\x00"), string(proc), blobs, initID, debug), nil
}

// filesID identifies a file or the files of a directory by name, size and
// modification time (cheap; a changed blob set or init gets a new key).
func filesID(path string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%v\n", p, fi.Size(), fi.ModTime().UnixNano(), fi.Mode())
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// treeHash hashes a directory tree's names, modes, owners, sizes, times and
// link targets; empty reports a directory with no entries (or none at all).
func treeHash(dir string) (string, bool, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "", true, nil
	}
	if err != nil {
		return "", false, err
	}
	if len(des) == 0 {
		return "", true, nil
	}
	h := sha256.New()
	var lines []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		lines = append(lines, fmt.Sprintf("%s\x00%v\x00%d\x00%d\x00%s", rel, fi.Mode(), fi.Size(), fi.ModTime().UnixNano(), link))
		return nil
	})
	if err != nil {
		return "", false, err
	}
	sort.Strings(lines)
	for _, l := range lines {
		h.Write([]byte(l + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil)), false, nil
}
