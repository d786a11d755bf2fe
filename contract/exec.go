package contract

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Exec commands: the argv vectors a production enclave may execute on
// request (kubectl exec, exec probes, lifecycle hooks). They are recorded in
// the measured process description (eif/ramdisk.Process.Exec), so the list
// is part of the enclave's PCRs; init compares every request with it,
// exactly and argument by argument, before running anything. There is no
// shell expansion and no prefix or pattern matching: ["cat","/tmp/ready"]
// allows exactly `cat /tmp/ready`.
//
// The webhook adds every exec probe and postStart/preStop exec hook of a
// container to its list, and the commands the Pod's author lists in the
// ExecCommandsAnnotation annotation: a JSON object from app-container name
// to a list of argv vectors, for example
//
//	{"app":[["cat","/tmp/healthy"],["/bin/app","--status"]]}
//
// Debug enclaves run any command.
const (
	// ExecCommandsAnnotation is where a Pod's author lists extra commands.
	ExecCommandsAnnotation = "nitropod.io/exec-commands"
	// MaxExecCommandsAnnotationBytes bounds that annotation's length.
	MaxExecCommandsAnnotationBytes = 64 << 10
	// MaxExecCommands bounds the commands of one container.
	MaxExecCommands = 64
	// MaxExecArgs bounds the arguments of one command, argv[0] included.
	MaxExecArgs = 64
	// MaxExecArgBytes bounds one argument.
	MaxExecArgBytes = 4096
	// MaxExecCommandBytes bounds one command's arguments together.
	MaxExecCommandBytes = 16 << 10
)

// ExecPolicy says which commands an enclave executes on request.
type ExecPolicy struct {
	// Any is set for a debug enclave: every command runs.
	Any bool `json:"any,omitempty"`
	// Commands are the argv vectors a production enclave runs.
	Commands [][]string `json:"commands,omitempty"`
}

// Allows reports whether p allows argv: Any, or an exact match with one of
// Commands (same length, every argument byte for byte). A nil policy allows
// nothing.
func (p *ExecPolicy) Allows(argv []string) bool {
	if p == nil || len(argv) == 0 {
		return false
	}
	if p.Any {
		return true
	}
	for _, c := range p.Commands {
		if slices.Equal(c, argv) {
			return true
		}
	}
	return false
}

// ExecRefusal is the message a production enclave answers an exec of argv
// that is not in its measured list with.
func ExecRefusal(argv []string) string {
	return fmt.Sprintf("exec %s refused: production enclaves run only measured commands, and this command is not among them. "+
		"To allow it, add it to the Pod's %s annotation as an exact argv vector, for example {\"<container>\":[%s]} "+
		"(exec probes and lifecycle hooks are added automatically), then re-create the Pod: the list is part of the enclave's measurement (PCRs). "+
		"Debug enclaves (%s) run any command",
		quoteArgv(argv), ExecCommandsAnnotation, argvJSON(argv), "ANJ_ENCLAVE_DEBUG_MODE=yes")
}

func quoteArgv(argv []string) string {
	const max = 8
	parts := make([]string, 0, max+1)
	for i, a := range argv {
		if i == max {
			parts = append(parts, fmt.Sprintf("… (%d arguments)", len(argv)))
			break
		}
		parts = append(parts, Clip(a))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func argvJSON(argv []string) string {
	if len(argv) > MaxExecArgs || argvBytes(argv) > 1024 {
		return `["cmd","arg"]`
	}
	b, err := json.Marshal(argv)
	if err != nil {
		return `["cmd","arg"]`
	}
	return string(b)
}

func argvBytes(argv []string) int {
	n := 0
	for _, a := range argv {
		n += len(a)
	}
	return n
}

// CheckExecCommand reports what is wrong with one allowed command.
func CheckExecCommand(argv []string) error {
	switch {
	case len(argv) == 0:
		return fmt.Errorf("an exec command needs at least argv[0]")
	case len(argv) > MaxExecArgs:
		return fmt.Errorf("exec command %s has %d arguments, more than the %d allowed", quoteArgv(argv), len(argv), MaxExecArgs)
	case argv[0] == "":
		return fmt.Errorf("exec command %s has an empty argv[0]", quoteArgv(argv))
	}
	for _, a := range argv {
		if len(a) > MaxExecArgBytes {
			return fmt.Errorf("exec command %s has an argument of %d bytes, more than the %d allowed", quoteArgv(argv), len(a), MaxExecArgBytes)
		}
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("exec command %s has an argument with a NUL byte", quoteArgv(argv))
		}
	}
	if n := argvBytes(argv); n > MaxExecCommandBytes {
		return fmt.Errorf("exec command %s is %d bytes, more than the %d allowed", quoteArgv(argv), n, MaxExecCommandBytes)
	}
	return nil
}

// CheckExecCommands checks a container's list: its length and every command.
func CheckExecCommands(container string, cmds [][]string) error {
	if len(cmds) > MaxExecCommands {
		return fmt.Errorf("container %q: %d exec commands, more than the %d allowed", container, len(cmds), MaxExecCommands)
	}
	for _, c := range cmds {
		if err := CheckExecCommand(c); err != nil {
			return fmt.Errorf("container %q: %w", container, err)
		}
	}
	return nil
}

// MergeExecCommands appends the commands of add that cmds lacks, keeping
// the order of first appearance.
func MergeExecCommands(cmds [][]string, add ...[]string) [][]string {
	for _, a := range add {
		if !slices.ContainsFunc(cmds, func(c []string) bool { return slices.Equal(c, a) }) {
			cmds = append(cmds, slices.Clone(a))
		}
	}
	return cmds
}

// ParseExecCommands decodes and validates the value of the
// ExecCommandsAnnotation annotation.
func ParseExecCommands(s string) (map[string][][]string, error) {
	if len(s) > MaxExecCommandsAnnotationBytes {
		return nil, fmt.Errorf("annotation %s is %d bytes, more than the %d allowed", ExecCommandsAnnotation, len(s), MaxExecCommandsAnnotationBytes)
	}
	var m map[string][][]string
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("decoding annotation %s %s: %w (write a JSON object from container name to a list of argv arrays, e.g. {\"app\":[[\"cat\",\"/tmp/healthy\"]]})",
			ExecCommandsAnnotation, Clip(s), err)
	}
	if len(m) > MaxEnclavesPerPod {
		return nil, fmt.Errorf("annotation %s names %d containers, more than the %d allowed", ExecCommandsAnnotation, len(m), MaxEnclavesPerPod)
	}
	for _, name := range slices.Sorted(maps.Keys(m)) {
		if err := CheckExecCommands(name, m[name]); err != nil {
			return nil, fmt.Errorf("annotation %s: %w", ExecCommandsAnnotation, err)
		}
	}
	return m, nil
}
