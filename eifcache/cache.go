// Package eifcache is the node's cache of Enclave Image Files
// (docs/ARCHITECTURE.md §7). Entries are addressed by a content key computed from
// everything that goes into the EIF (Key), written atomically (temp file +
// rename), filled once per key even when several goroutines or processes ask
// for the same key at once (an in-process wait plus a per-key file lock),
// verified on every hit (a corrupt file is refilled), and evicted least
// recently used first when the directory grows past its size cap. Files are
// readable by root only: an EIF can contain the Pod's environment.
//
// An entry in use is protected from eviction by a shared flock on its file,
// held until Entry.Release, so several shims on one node can share a cache
// directory.
package eifcache

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	entrySuffix = ".eif"
	lockSuffix  = ".lock"
	tempPrefix  = ".tmp-"
)

// Cache is a directory of EIF files. It is safe for concurrent use, also by
// several processes sharing the directory.
type Cache struct {
	dir      string
	maxBytes int64

	// Verify checks a cached file before it is returned; a file that fails
	// is removed and filled again. It defaults to VerifyCRC.
	Verify func(path string) error

	mu       sync.Mutex
	inflight map[string]*sync.Mutex
}

// Entry is one cached EIF, held by its user until Release.
type Entry struct {
	// Path is the EIF file; it stays in place until Release.
	Path string
	// Hit is true when the file was already in the cache (no fill ran).
	Hit bool
	// Replaced is set when a cached file failed verification and was
	// filled again; it says why.
	Replaced string

	once sync.Once
	f    *os.File
}

// Release drops the reference that keeps the entry from being evicted.
// Calling it more than once is harmless.
func (e *Entry) Release() {
	if e == nil {
		return
	}
	e.once.Do(func() {
		if e.f != nil {
			_ = e.f.Close()
		}
	})
}

// Open opens (creating when needed, mode 0700) the cache in dir. maxBytes
// caps the total size of the entries; 0 or less means no cap.
func Open(dir string, maxBytes int64) (*Cache, error) {
	if dir == "" {
		return nil, errors.New("opening eif cache: empty directory path")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating eif cache directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("securing eif cache directory: %w", err)
	}
	c := &Cache{dir: dir, maxBytes: maxBytes, Verify: VerifyCRC, inflight: map[string]*sync.Mutex{}}
	c.removeStaleTemps()
	return c, nil
}

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.dir }

// Key derives a cache key from the parts that determine an EIF's content
// (rootfs identity, process spec, blob set, init, builder version). Parts
// are length-prefixed, so ("ab","c") and ("a","bc") differ.
func Key(parts ...string) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func validKey(key string) error {
	if key == "" || len(key) > 128 || strings.ContainsAny(key, "/\\\x00") || strings.HasPrefix(key, ".") {
		return fmt.Errorf("invalid eif cache key %q: use eifcache.Key to make one", key)
	}
	return nil
}

// Get returns the entry for key, calling fill to write the EIF when it is
// missing or corrupt. fill runs at most once per key at a time across all
// goroutines and processes sharing the directory; the others wait and then
// get the filled file as a hit. The caller must Release the entry.
func (c *Cache) Get(ctx context.Context, key string, fill func(ctx context.Context, w io.Writer) error) (*Entry, error) {
	if err := validKey(key); err != nil {
		return nil, err
	}
	// In-process: one goroutine per key goes on; flock is per open file
	// description, so it also serialises goroutines, but a mutex lets
	// waiters honour ctx.
	km := c.keyMutex(key)
	if err := lockCtx(ctx, km); err != nil {
		return nil, err
	}
	defer km.Unlock()

	lock, err := os.OpenFile(filepath.Join(c.dir, key+lockSuffix), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening eif cache lock: %w", err)
	}
	defer lock.Close()
	if err := flockCtx(ctx, lock, unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("locking eif cache key: %w", err)
	}

	path := filepath.Join(c.dir, key+entrySuffix)
	replaced := ""
	if e, err := c.openEntry(path); err == nil {
		e.Hit = true
		return e, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		// Corrupt or unreadable: rebuild.
		replaced = err.Error()
		_ = os.Remove(path)
	}

	if err := c.fill(ctx, path, fill); err != nil {
		return nil, err
	}
	e, err := c.openEntry(path)
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("checking the eif just written: %w", err)
	}
	c.evict(path)
	e.Replaced = replaced
	return e, nil
}

func (c *Cache) keyMutex(key string) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.inflight[key]
	if !ok {
		m = &sync.Mutex{}
		c.inflight[key] = m
	}
	return m
}

func lockCtx(ctx context.Context, m *sync.Mutex) error {
	for {
		if m.TryLock() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for eif cache key: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func flockCtx(ctx context.Context, f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// openEntry verifies the file, takes a shared lock on it (the reference)
// and marks it recently used.
func (c *Cache) openEntry(path string) (*Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("referencing cached eif: %w", err)
	}
	if c.Verify != nil {
		if err := c.Verify(path); err != nil {
			f.Close()
			return nil, fmt.Errorf("verifying cached eif %s: %w", path, err)
		}
	}
	now := time.Now()
	_ = os.Chtimes(path, now, now)
	return &Entry{Path: path, f: f}, nil
}

func (c *Cache) fill(ctx context.Context, path string, fill func(ctx context.Context, w io.Writer) error) error {
	tmp, err := os.CreateTemp(c.dir, tempPrefix)
	if err != nil {
		return fmt.Errorf("creating eif cache temp file: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("securing eif cache temp file: %w", err)
	}
	if err := fill(ctx, tmp); err != nil {
		return fmt.Errorf("filling eif cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing eif cache temp file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing eif cache temp file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("publishing eif cache entry: %w", err)
	}
	done = true
	if d, err := os.Open(c.dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Size is the total size of the cache's entries in bytes.
func (c *Cache) Size() (int64, error) {
	ents, err := c.entries()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ents {
		n += e.size
	}
	return n, nil
}

type fileInfo struct {
	path  string
	size  int64
	mtime time.Time
}

func (c *Cache) entries() ([]fileInfo, error) {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("listing eif cache: %w", err)
	}
	var out []fileInfo
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), entrySuffix) || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		out = append(out, fileInfo{path: filepath.Join(c.dir, de.Name()), size: fi.Size(), mtime: fi.ModTime()})
	}
	return out, nil
}

// evict removes least recently used entries until the total fits the cap.
// keep (the entry just filled) and entries in use (shared lock held by any
// process) are never removed.
func (c *Cache) evict(keep string) {
	if c.maxBytes <= 0 {
		return
	}
	ents, err := c.entries()
	if err != nil {
		return
	}
	var total int64
	for _, e := range ents {
		total += e.size
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].mtime.Before(ents[j].mtime) })
	for _, e := range ents {
		if total <= c.maxBytes {
			return
		}
		if e.path == keep {
			continue
		}
		if c.removeIfUnused(e.path) {
			total -= e.size
		}
	}
}

func (c *Cache) removeIfUnused(path string) bool {
	key := strings.TrimSuffix(filepath.Base(path), entrySuffix)
	lock, err := os.OpenFile(filepath.Join(c.dir, key+lockSuffix), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false
	}
	defer lock.Close()
	// Someone filling or opening this key right now: leave it.
	if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return false // referenced
	}
	// The lock file stays: removing it could let two processes hold
	// "the" lock on different inodes.
	return os.Remove(path) == nil
}

func (c *Cache) removeStaleTemps() {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	for _, de := range des {
		if strings.HasPrefix(de.Name(), tempPrefix) {
			if fi, err := de.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
				_ = os.Remove(filepath.Join(c.dir, de.Name()))
			}
		}
	}
}
