package enclave

import (
	"errors"

	"github.com/nitropod/nitropod/enclave/agent"
)

// Exec asks init to run a process next to the app (agent.KindExec): init
// answers on the returned stream with agent.ExecStarted or
// agent.ExecError (for example a production enclave's refusal of a
// command it was not measured with).
func (s *Session) Exec(req agent.ExecRequest) (*agent.ExecConn, error) {
	select {
	case <-s.done:
		return nil, errors.New("the app has already exited")
	default:
	}
	return s.cl.Exec(req)
}
