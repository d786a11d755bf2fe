package nitrocli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nitropod/nitropod/internal/safefile"
)

// Files in Config.StateDir that every launcher on the node shares.
const (
	// BootLockFile serialises run-enclave node-wide: every boot binds
	// vsock port 9000 on the parent for the enclave's heartbeat, so a
	// second concurrent boot fails (E36, "vsock bind error").
	BootLockFile = "nitro-cli-boot.lock"
	// DescribeLockFile and DescribeCacheFile share describe-enclaves'
	// answer between the launchers: one call per PollInterval per node.
	DescribeLockFile  = "nitro-cli-describe.lock"
	DescribeCacheFile = "nitro-cli-describe.json"
)

// maxCacheSize bounds the describe cache file read back (it holds one
// describe-enclaves output; a node runs a handful of enclaves).
const maxCacheSize = 4 << 20

// flockFile takes an exclusive flock on path (created 0600), waiting while
// another process holds it, until ctx ends. The lock goes with the process
// if it dies.
func flockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// lockBoot takes the node-wide boot lock (a no-op without StateDir).
func (b *Backend) lockBoot(ctx context.Context) (func(), error) {
	if b.cfg.StateDir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(b.cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating nitro-cli state directory: %w", err)
	}
	return flockFile(ctx, filepath.Join(b.cfg.StateDir, BootLockFile))
}

// describeResult is one describe-enclaves answer.
type describeResult struct {
	// At is when the command started.
	At time.Time
	// Enclaves is the parsed array (possibly partial, see Complete).
	Enclaves []DescribeInfo
	// Complete is false when nitro-cli exited non-zero although it printed
	// an array: some enclave process did not answer, and an enclave absent
	// from Enclaves may be that one.
	Complete bool
	// Err is set when there was no array to parse.
	Err error
}

// describeNow runs describe-enclaves. nitro-cli prints the enclaves that
// answered and then fails with E39 when one enclave process did not (v1.5
// src/enclave_proc_comm.rs); the array is still used.
func (b *Backend) describeNow(ctx context.Context) describeResult {
	args := []string{"describe-enclaves"}
	r := describeResult{At: time.Now()}
	out, stderr, err := b.cfg.Runner.Output(ctx, args)
	ds, perr := ParseDescribe(out)
	switch {
	case perr == nil:
		r.Enclaves, r.Complete = ds, err == nil
	case err != nil:
		r.Err = &CommandError{Args: args, Err: err, Stderr: string(stderr)}
	default:
		r.Err = perr
	}
	return r
}

// cachedDescribe is DescribeCacheFile's content.
type cachedDescribe struct {
	At       time.Time      `json:"at"`
	Enclaves []DescribeInfo `json:"enclaves"`
	Complete bool           `json:"complete"`
	Err      string         `json:"err,omitempty"`
}

// pollDescribe answers a watcher: with StateDir set, from the node's shared
// cache when that was taken less than PollInterval ago and not before
// notBefore, else by running describe-enclaves (under the cache lock, so
// node-wide the command starts at most once per PollInterval).
func (b *Backend) pollDescribe(ctx context.Context, notBefore time.Time) describeResult {
	if b.cfg.StateDir == "" {
		return b.describeNow(ctx)
	}
	unlock, err := flockFile(ctx, filepath.Join(b.cfg.StateDir, DescribeLockFile))
	if err != nil {
		return describeResult{At: time.Now(), Err: err}
	}
	defer unlock()
	cache := filepath.Join(b.cfg.StateDir, DescribeCacheFile)
	if c, err := readCache(cache); err == nil && !c.At.Before(notBefore) && time.Since(c.At) < b.cfg.PollInterval {
		r := describeResult{At: c.At, Enclaves: c.Enclaves, Complete: c.Complete}
		if c.Err != "" {
			r.Err = errors.New(c.Err)
		}
		return r
	}
	r := b.describeNow(ctx)
	c := cachedDescribe{At: r.At, Enclaves: r.Enclaves, Complete: r.Complete}
	if r.Err != nil {
		c.Err = r.Err.Error()
	}
	if buf, err := json.Marshal(c); err == nil {
		tmp := cache + ".tmp"
		if os.WriteFile(tmp, buf, 0o600) == nil {
			_ = os.Rename(tmp, cache)
		}
	}
	return r
}

func readCache(path string) (cachedDescribe, error) {
	var v cachedDescribe
	err := safefile.ReadJSON(path, maxCacheSize, &v)
	return v, err
}

// hasErrorCode reports whether nitro-cli's stderr carries its "[ Exx ]"
// error line: the command concluded by itself (it did not die or get
// killed half-way).
func hasErrorCode(stderr []byte) bool {
	return strings.Contains(string(stderr), "[ E")
}

// isVsockBindError reports whether a failed run-enclave lost the race for
// the heartbeat port: E36 (EnclaveBootFailure) whose backtrace (printed
// because run-enclave runs with BACKTRACE=1) says "vsock bind error" (v1.5
// src/enclave_proc/resource_manager.rs create_enclave).
func isVsockBindError(stderr []byte) bool {
	s := string(stderr)
	return strings.Contains(s, "[ E36 ]") && strings.Contains(s, "vsock bind error")
}

// TerminateName terminates the enclaves nitro-cli lists under name (the
// container ID), e.g. one whose launcher died before it learnt the
// enclave's ID. An enclave still booting is not listed yet and is missed.
func (b *Backend) TerminateName(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("terminating enclave: no name given")
	}
	r := b.describeNow(ctx)
	if r.Err != nil {
		return fmt.Errorf("terminating enclave %s: %w", name, r.Err)
	}
	var errs []error
	for _, d := range r.Enclaves {
		if d.EnclaveName == name {
			errs = append(errs, b.TerminateID(ctx, d.EnclaveID))
		}
	}
	return errors.Join(errs...)
}

// cleanupByName terminates the enclave named name that a failed or
// cancelled boot may have left behind, looking for it until until: nitro-cli
// lists an enclave only once it has booted, and a killed run-enclave's
// detached enclave process boots on. It returns the termination error, or
// nil when no such enclave showed up.
func (b *Backend) cleanupByName(name string, until time.Time) error {
	if name == "" {
		return nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), until.Add(30*time.Second))
	defer cancel()
	for {
		r := b.describeNow(ctx)
		var errs []error
		found := false
		for _, d := range r.Enclaves {
			if d.EnclaveName == name {
				found = true
				if err := b.TerminateID(ctx, d.EnclaveID); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if found {
			return errors.Join(errs...)
		}
		if !time.Now().Before(until) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(min(b.cfg.CleanupPoll, time.Until(until)+time.Millisecond)):
		}
	}
}
