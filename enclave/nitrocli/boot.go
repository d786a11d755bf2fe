package nitrocli

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// runEnclave runs run-enclave (the caller holds the node's boot lock) and
// leaves no enclave behind when it fails or ctx ends:
//
//   - A boot that lost the heartbeat port to a boot outside the lock (E36,
//     vsock bind error) is retried once after RetryDelay.
//   - When ctx ends, run-enclave is not killed at once: killing the CLI
//     does not stop the enclave process it detached, which boots on. It is
//     given CleanupWait to finish, and what it started is terminated.
//   - When run-enclave failed without concluding (killed, or no "[ Exx ]"
//     line), its enclave may still be booting: the enclave named name is
//     looked for (nitro-cli lists it once booted) and terminated, for up to
//     CleanupWait. When it concluded with an error, one look suffices.
func (b *Backend) runEnclave(ctx context.Context, name string, args []string) (*RunInfo, error) {
	for attempt := 1; ; attempt++ {
		out, stderr, killed, err := b.runBounded(ctx, args)
		cancelled := ctx.Err()
		if err == nil {
			ri, perr := ParseRun(out)
			switch {
			case perr != nil:
				cerr := b.cleanupByName(name, time.Now())
				return nil, errors.Join(perr, cleanupErr(cerr))
			case cancelled != nil:
				tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				terr := b.TerminateID(tctx, ri.EnclaveID)
				cancel()
				return nil, errors.Join(fmt.Errorf("boot cancelled: %w", cancelled), cleanupErr(terr))
			}
			return ri, nil
		}
		cmdErr := &CommandError{Args: args, Err: err, Stderr: string(stderr)}
		var ns *notStartedError
		if errors.As(err, &ns) {
			return nil, cmdErr // nothing ran, nothing to clean up
		}
		if cancelled == nil && attempt == 1 && isVsockBindError(stderr) {
			select {
			case <-ctx.Done():
			case <-time.After(b.cfg.RetryDelay):
				continue
			}
			cancelled = ctx.Err()
		}
		until := time.Now()
		if killed || !hasErrorCode(stderr) {
			until = until.Add(b.cfg.CleanupWait)
		}
		cerr := cleanupErr(b.cleanupByName(name, until))
		if cancelled != nil {
			return nil, errors.Join(fmt.Errorf("boot cancelled: %w", cancelled), cerr)
		}
		return nil, errors.Join(cmdErr, cerr)
	}
}

func cleanupErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("terminating the enclave the failed boot left: %w", err)
}

// runBounded runs args to completion even when ctx ends, for at most
// CleanupWait after that; killed reports that it had to be killed.
func (b *Backend) runBounded(ctx context.Context, args []string) (out, stderr []byte, killed bool, err error) {
	runCtx, kill := context.WithCancel(context.WithoutCancel(ctx))
	defer kill()
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-finished:
			return
		case <-ctx.Done():
		}
		t := time.NewTimer(b.cfg.CleanupWait)
		defer t.Stop()
		select {
		case <-finished:
		case <-t.C:
			kill()
		}
	}()
	out, stderr, err = b.cfg.Runner.Output(runCtx, args)
	return out, stderr, runCtx.Err() != nil, err
}
