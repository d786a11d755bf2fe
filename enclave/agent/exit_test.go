package agent

import (
	"encoding/json"
	"testing"
)

// TestExitMessageOOMCompatible: an exit without an OOM kill encodes as
// before the field existed, and an old peer's exit decodes as not OOM.
func TestExitMessageOOMCompatible(t *testing.T) {
	b, err := json.Marshal(Message{Type: MsgExit, Code: 137, Signal: 9})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"type":"exit","signal":9,"code":137}`; string(b) != want {
		t.Errorf("exit = %s, want %s", b, want)
	}
	b, _ = json.Marshal(Message{Type: MsgExit, Code: 137, Signal: 9, OOMKilled: true})
	var m Message
	if err := json.Unmarshal(b, &m); err != nil || !m.OOMKilled {
		t.Errorf("OOM exit %s decodes as %+v, %v", b, m, err)
	}
	var old Message
	if err := json.Unmarshal([]byte(`{"type":"exit","signal":9,"code":137}`), &old); err != nil || old.OOMKilled {
		t.Errorf("old exit decodes as %+v, %v", old, err)
	}
}
