package agent

import (
	"context"
	"fmt"
)

// ExitOOM reports the app's exit status as Exit does, marked as killed by
// the enclave kernel's OOM killer when oomKilled is set.
func (g *Guest) ExitOOM(ctx context.Context, code, signal int, oomKilled bool) error {
	if err := g.wait(ctx, g.ctrlCh); err != nil {
		return fmt.Errorf("reporting exit status: %w", err)
	}
	if err := g.send(Message{Type: MsgExit, Code: code, Signal: signal, OOMKilled: oomKilled}); err != nil {
		return fmt.Errorf("reporting exit status: %w", err)
	}
	return g.wait(ctx, g.byeCh)
}
