package shim_test

import (
	"bufio"
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

// killOnCleanup kills and deletes container id when the test ends.
func (e *env) killOnCleanup(t testing.TB, id string) {
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = e.Ctrd.Ctr(c, ns, "task", "kill", "-s", "SIGKILL", id)
		for range 100 {
			if _, err := e.Ctrd.Ctr(c, ns, "task", "delete", id); err == nil || c.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		_, _ = e.Ctrd.Ctr(c, ns, "container", "delete", id)
	})
}

// execCmd is `ctr task exec --exec-id EXEC [flags] ID ARGS...`.
func (e *env) execCmd(ctx context.Context, id, execID string, flags []string, args ...string) *exec.Cmd {
	full := append([]string{"task", "exec", "--exec-id", execID}, flags...)
	full = append(full, id)
	full = append(full, args...)
	return e.Ctrd.CtrCmd(ctx, ns, full...)
}

// TestCtrExecDebugEnclave: `ctr task exec` in a debug enclave runs the
// command inside the enclave with the app's environment and working
// directory: stdout and stderr apart, its exit code, stdin until EOF,
// a signal from `ctr task kill --exec-id`, and a TTY (a pty of the
// enclave's devpts) whose size follows the client's terminal.
func TestCtrExecDebugEnclave(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	const id = "execdebug"
	e.killOnCleanup(t, id)
	e.runDetached(t, ctx, []string{"--env", nitropod.DebugModeEnv + "=" + nitropod.DebugModeValue, "--env", "GREETING=from-the-app", "--cwd", "/etc"},
		id, "sh", "-c", "echo app-marker > /tmp/app-marker; exec sleep 600")

	t.Run("output and exit code", func(t *testing.T) {
		cmd := e.execCmd(ctx, id, "e1", nil, "sh", "-c", `echo "out:$GREETING:$(pwd):$(cat /tmp/app-marker)"; echo err-line >&2; exit 3`)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if code := exitCode(err); code != 3 {
			t.Fatalf("exit code %d (%v), want 3; stdout %q stderr %q", code, err, stdout.String(), stderr.String())
		}
		if got := stdout.String(); got != "out:from-the-app:/etc:app-marker\n" {
			t.Errorf("stdout %q: want the app's env, cwd and filesystem", got)
		}
		if got := stderr.String(); got != "err-line\n" {
			t.Errorf("stderr %q, want %q", got, "err-line\n")
		}
	})

	t.Run("stdin", func(t *testing.T) {
		cmd := e.execCmd(ctx, id, "e2", nil, "sh", "-c", "wc -c; cat /dev/null")
		// 300 KB: more than one exec message and one pipe buffer.
		cmd.Stdin = strings.NewReader(strings.Repeat("0123456789", 30000))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("exec with stdin: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "300000" {
			t.Errorf("the exec read %q bytes of stdin, want 300000", got)
		}
	})

	t.Run("large output complete before exit", func(t *testing.T) {
		cmd := e.execCmd(ctx, id, "e3", nil, "sh", "-c", "head -c 2000000 /dev/zero | tr '\\0' x; echo; echo END")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("exec: %v", err)
		}
		if len(out) != 2000005 || !strings.HasSuffix(string(out), "\nEND\n") {
			t.Errorf("got %d bytes ending %q, want 2000005 ending with END", len(out), string(out[max(0, len(out)-10):]))
		}
	})

	t.Run("signal", func(t *testing.T) {
		cmd := e.execCmd(ctx, id, "e4", nil, "sleep", "300")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var killErr error
		for i := 0; i < 100; i++ {
			var o string
			if o, killErr = e.Ctrd.Ctr(ctx, ns, "task", "kill", "--exec-id", "e4", "-s", "SIGTERM", id); killErr == nil {
				break
			} else {
				_ = o
			}
			time.Sleep(100 * time.Millisecond)
		}
		if killErr != nil {
			t.Fatalf("ctr task kill --exec-id: %v", killErr)
		}
		select {
		case err := <-done:
			if code := exitCode(err); code != 143 {
				t.Errorf("exit code %d after SIGTERM, want 143 (%s)", code, out.String())
			}
		case <-time.After(time.Minute):
			t.Fatal("the exec did not end after SIGTERM")
		}
	})

	t.Run("tty", func(t *testing.T) {
		script := `echo tty-$(tty); echo size-$(stty size | tr ' ' x); read line; echo size-$(stty size | tr ' ' x); echo got-$line; exit 7`
		cmd := e.execCmd(ctx, id, "e5", []string{"-t"}, "sh", "-c", script)
		tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
		if err != nil {
			t.Fatal(err)
		}
		defer tty.Close()
		lines := make(chan string, 256)
		go func() {
			sc := bufio.NewScanner(tty)
			for sc.Scan() {
				lines <- strings.TrimRight(sc.Text(), "\r")
			}
			close(lines)
		}()
		var seen []string
		expect := func(want string) {
			t.Helper()
			deadline := time.After(time.Minute)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("the terminal closed before %q; it showed %q", want, seen)
					}
					seen = append(seen, l)
					if strings.TrimSpace(l) == want {
						return
					}
				case <-deadline:
					t.Fatalf("no line %q on the terminal; it showed %q", want, seen)
				}
			}
		}
		expect("tty-/dev/pts/0")
		expect("size-30x100")
		if err := pty.Setsize(tty, &pty.Winsize{Rows: 50, Cols: 120}); err != nil {
			t.Fatal(err)
		}
		// ctr forwards the SIGWINCH it gets as ResizePty.
		time.Sleep(2 * time.Second)
		_, _ = io.WriteString(tty, "typed-line\r")
		expect("typed-line") // the enclave terminal's echo
		expect("size-50x120")
		expect("got-typed-line")
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if code := exitCode(err); code != 7 {
				t.Errorf("tty exec exit code %d, want 7", code)
			}
		case <-time.After(time.Minute):
			t.Fatal("the tty exec did not end")
		}
	})

	t.Run("command not in the image", func(t *testing.T) {
		out, err := e.execCmd(ctx, id, "e6", nil, "no-such-command").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "no-such-command") || !strings.Contains(string(out), "not found") {
			t.Errorf("exec of a missing command: %v\n%s", err, out)
		}
	})
}

// TestCtrExecProductionEnclave: a production enclave runs exactly the
// commands measured into it (here from the nitropod.io/exec-commands
// annotation, as for a container not created by Kubernetes) and refuses
// anything else, even a differing argument, with the message that says how
// to add one.
func TestCtrExecProductionEnclave(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.importImage(t, ctx, ns, busyboxRef, busyboxImage(t, ""))
	const id = "execprod"
	ann := contract.ExecCommandsAnnotation + `={"` + id + `":[["cat","/etc/exec-ok"],["sh","-c","exit 4"]]}`
	e.killOnCleanup(t, id)
	e.runDetached(t, ctx, []string{"--annotation", ann}, id,
		"sh", "-c", "echo allowed-ran > /etc/exec-ok; exec sleep 600")

	out, err := e.execCmd(ctx, id, "ok", nil, "cat", "/etc/exec-ok").CombinedOutput()
	if err != nil || string(out) != "allowed-ran\n" {
		t.Errorf("measured command: %v, output %q", err, out)
	}
	if err := e.execCmd(ctx, id, "ok4", nil, "sh", "-c", "exit 4").Run(); exitCode(err) != 4 {
		t.Errorf("measured command exit: %v, want code 4", err)
	}
	for i, argv := range [][]string{
		{"sh"},
		{"cat", "/etc/shadow"},
		{"cat", "/etc/exec-ok", ""},
		{"cat", "/etc/exec-ok "},
		{"sh", "-c", "exit  4"},
	} {
		out, err := e.execCmd(ctx, id, "no"+string(rune('a'+i)), nil, argv...).CombinedOutput()
		if err == nil {
			t.Errorf("exec %q ran in a production enclave:\n%s", argv, out)
			continue
		}
		if !strings.Contains(string(out), "production enclaves run only measured commands") || !strings.Contains(string(out), contract.ExecCommandsAnnotation) {
			t.Errorf("exec %q refused without the explanation: %s", argv, out)
		}
	}
}
