// Command fakenitrocli is a FAKE nitro-cli for tests: no Nitro hardware (and
// so no real nitro-cli) can run on the machines that test this project. It
// keeps its "enclaves" as files in the directory named by
// $FAKE_NITRO_CLI_STATE and behaves, for the commands the nitrocli backend
// uses, as nitro-cli v1.5.0 does. What it models, and from which source file
// of aws/aws-nitro-enclaves-cli (tag v1.5.0):
//
//   - run-enclave forks a detached enclave process (src/main.rs,
//     src/enclave_proc_comm.rs enclave_proc_spawn; src/enclave_proc/mod.rs
//     create_enclave_process daemonises it). That process binds vsock port
//     9000 on CID 3 for the boot heartbeat and holds it until the enclave
//     reports ready (src/enclave_proc/resource_manager.rs create_enclave).
//     Here the bind is an exclusive flock on vsock-9000.lock in the state
//     directory, released by the kernel when the process dies, as a socket
//     is. A second boot while the port is bound fails with E36 "Enclave boot
//     failure" whose backtrace (shown on stderr when BACKTRACE=1,
//     src/common/mod.rs construct_error_message) names "vsock bind error";
//     the CLI then fails with E39 after "Failed connections: 1"
//     (src/enclave_proc_comm.rs enclave_process_handle_all_replies), exit
//     status 39 (the error enum's value, src/common/mod.rs).
//   - The enclave is listed only once it has booted: the enclave process
//     creates its socket (here: enclaves/<id>.json) after the heartbeat
//     (src/enclave_proc/mod.rs handle_command, Run). Killing the CLI during
//     the boot does not stop the detached enclave process, which boots on.
//     (Its final reply to the dead CLI then fails, and the real process may
//     exit on that error, releasing the enclave; without hardware that is
//     not settled, so the fake keeps the enclave running: the worse case.)
//   - A name already in use gets a suffix _1, _2, … (src/lib.rs
//     new_enclave_name).
//   - describe-enclaves asks every enclave process; one that does not answer
//     (marker file enclaves/<id>.hung) is left out of the array, which is
//     still printed on stdout, and the CLI then prints "Failed connections: N"
//     and E39 on stderr and exits 39 (src/enclave_proc_comm.rs
//     enclave_proc_command_send_all, enclave_process_handle_all_replies).
//   - terminate-enclave takes --enclave-id or --enclave-name; a name matching
//     no enclave fails with E58 (src/common/commands_parser.rs
//     TerminateEnclavesArgs, src/lib.rs get_id_by_name), an unknown id with
//     E11 (src/enclave_proc_comm.rs enclave_proc_connect_to_single).
//   - Every command logs at info level to nitro_enclaves.log in
//     $NITRO_CLI_LOGS_PATH (default: the state directory); RUST_LOG sets the
//     level (src/common/logger.rs).
//
// For tests it also appends one line per command to calls.log in the state
// directory: time, command, RUST_LOG and the process's cgroups. Environment:
// FAKE_NITRO_CLI_BOOT_DELAY (how long a boot takes, default 100ms) and
// FAKE_NITRO_CLI_HUNG_WAIT (how long describe waits for an enclave process
// that does not answer; nitro-cli waits 3s, default 100ms).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type enclaveInfo struct {
	EnclaveName  string `json:"EnclaveName"`
	EnclaveID    string `json:"EnclaveID"`
	ProcessID    int    `json:"ProcessID"`
	EnclaveCID   uint64 `json:"EnclaveCID"`
	NumberOfCPUs int    `json:"NumberOfCPUs"`
	CPUIDs       []int  `json:"CPUIDs"`
	MemoryMiB    int    `json:"MemoryMiB"`
	State        string `json:"State,omitempty"`
	Flags        string `json:"Flags,omitempty"`
}

// reply is what the enclave process sends back to the CLI that spawned it.
type reply struct {
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	OK     bool   `json:"ok"`
}

var state string

func main() {
	state = os.Getenv("FAKE_NITRO_CLI_STATE")
	if state == "" {
		fmt.Fprintln(os.Stderr, "fakenitrocli: FAKE_NITRO_CLI_STATE is not set")
		os.Exit(1)
	}
	if len(os.Args) < 2 {
		fail(1, "E01", "Missing mandatory argument.")
	}
	if err := os.MkdirAll(filepath.Join(state, "enclaves"), 0o700); err != nil {
		fail(19, "E19", err.Error())
	}
	cmd, args := os.Args[1], os.Args[2:]
	if cmd == "__enclave-process" {
		enclaveProcess(args)
		return
	}
	recordCall(cmd)
	logInfo("Start Nitro CLI")
	switch cmd {
	case "run-enclave":
		runEnclave(args)
	case "describe-enclaves":
		describe()
	case "terminate-enclave":
		terminate(args)
	case "console":
		console(args)
	default:
		fail(14, "E14", "Invalid command.")
	}
}

func recordCall(cmd string) {
	cg, _ := os.ReadFile("/proc/self/cgroup")
	line := fmt.Sprintf("%d %s RUST_LOG=%s pid=%d cgroup=%s\n", time.Now().UnixNano(), cmd, os.Getenv("RUST_LOG"), os.Getpid(),
		strings.ReplaceAll(strings.TrimSpace(string(cg)), "\n", ";"))
	appendFile(filepath.Join(state, "calls.log"), line)
}

func appendFile(path, line string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	_, _ = f.WriteString(line)
	f.Close()
}

// logInfo writes an info line to nitro-cli's log unless RUST_LOG asks for
// less (warn, error).
func logInfo(msg string) {
	switch strings.ToLower(os.Getenv("RUST_LOG")) {
	case "warn", "error":
		return
	}
	dir := os.Getenv("NITRO_CLI_LOGS_PATH")
	if dir == "" {
		dir = state
	}
	appendFile(filepath.Join(dir, "nitro_enclaves.log"), fmt.Sprintf("[%s INFO nitro-cli:%d] %s\n", time.Now().Format(time.RFC3339Nano), os.Getpid(), msg))
}

// errorText is nitro-cli's error message for code with the backtrace
// (subactions) when BACKTRACE=1.
func errorText(code, summary string, subactions ...string) string {
	s := fmt.Sprintf("[ %s ] %s\n\nFor more details, please visit the nitro-cli error documentation (%s)\n", code, summary, code)
	if os.Getenv("BACKTRACE") == "1" {
		s += "\nBacktrace:\n  Action: Run Enclave\n  Subactions:"
		for _, sa := range subactions {
			s += "\n    " + sa
		}
		s += "\n  Version: 1.5.0-fake\n"
	}
	return s
}

func fail(status int, code, summary string, subactions ...string) {
	fmt.Fprint(os.Stderr, errorText(code, summary, subactions...))
	os.Exit(status)
}

func enclaves() (infos []enclaveInfo, hung int) {
	paths, _ := filepath.Glob(filepath.Join(state, "enclaves", "*.json"))
	for _, p := range paths {
		if _, err := os.Stat(strings.TrimSuffix(p, ".json") + ".hung"); err == nil {
			hung++
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var ei enclaveInfo
		if json.Unmarshal(b, &ei) == nil {
			infos = append(infos, ei)
		}
	}
	return infos, hung
}

func runEnclave(args []string) {
	var ei enclaveInfo
	eif := ""
	debug := false
	for i := 0; i < len(args); i++ {
		next := func() string {
			if i+1 >= len(args) {
				fail(1, "E01", "Missing mandatory argument.")
			}
			i++
			return args[i]
		}
		switch args[i] {
		case "--eif-path":
			eif = next()
		case "--memory":
			ei.MemoryMiB, _ = strconv.Atoi(next())
		case "--cpu-count":
			ei.NumberOfCPUs, _ = strconv.Atoi(next())
		case "--cpu-ids":
			for i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
				id, _ := strconv.Atoi(next())
				ei.CPUIDs = append(ei.CPUIDs, id)
			}
			ei.NumberOfCPUs = len(ei.CPUIDs)
		case "--enclave-cid":
			ei.EnclaveCID, _ = strconv.ParseUint(next(), 10, 64)
		case "--enclave-name":
			ei.EnclaveName = next()
		case "--debug-mode":
			debug = true
		default:
			fail(3, "E03", "Invalid argument provided: "+args[i])
		}
	}
	if _, err := os.Stat(eif); err != nil {
		fail(7, "E07", "Read from disk failure: "+eif)
	}
	if ei.EnclaveName == "" {
		ei.EnclaveName = strings.TrimSuffix(filepath.Base(eif), ".eif")
	}
	existing, _ := enclaves()
	names := map[string]bool{}
	for _, e := range existing {
		names[e.EnclaveName] = true
	}
	base := ei.EnclaveName
	for n := 1; names[ei.EnclaveName]; n++ {
		ei.EnclaveName = base + "_" + strconv.Itoa(n)
	}
	ei.Flags = "NONE"
	if debug {
		ei.Flags = "DEBUG_MODE"
	}
	b, _ := json.Marshal(ei)

	// Spawn the detached enclave process; its reply comes back on a pipe
	// (nitro-cli: a socket pair).
	pr, pw, err := os.Pipe()
	if err != nil {
		fail(4, "E04", err.Error())
	}
	self, _ := os.Executable()
	cmd := exec.Command(self, "__enclave-process", string(b))
	cmd.ExtraFiles = []*os.File{pw} // fd 3; stdio is /dev/null, as after daemon(3)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fail(5, "E05", err.Error())
	}
	pw.Close()
	go func() { _ = cmd.Wait() }() // not waited for: it outlives the CLI
	out, _ := io.ReadAll(pr)
	var r reply
	if err := json.Unmarshal(out, &r); err != nil || !r.OK {
		fmt.Fprint(os.Stderr, r.Stderr)
		fmt.Fprintln(os.Stderr, "Failed connections: 1")
		fail(39, "E39", "Enclave process connection failure.")
	}
	fmt.Print(r.Stdout)
}

// enclaveProcess is the detached enclave process: bind the heartbeat port,
// boot, list the enclave, answer the CLI, then live until terminated.
func enclaveProcess(args []string) {
	var ei enclaveInfo
	if len(args) != 1 || json.Unmarshal([]byte(args[0]), &ei) != nil {
		os.Exit(1)
	}
	conn := os.NewFile(3, "cli")
	send := func(r reply) {
		b, _ := json.Marshal(r)
		_, _ = conn.Write(b) // fails (EPIPE) when the CLI is gone; the boot goes on
		conn.Close()
	}
	lock, err := os.OpenFile(filepath.Join(state, "vsock-9000.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		os.Exit(1)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		send(reply{Stderr: errorText("E36", "Enclave boot failure. Such error appears when attempting to receive the `ready` signal from a freshly booted enclave.",
			"Enclave boot heartbeat vsock connection - vsock bind error", "Failed to trigger enclave run", "Failed to execute command `Run`")})
		os.Exit(36)
	}
	delay := 100 * time.Millisecond
	if d, err := time.ParseDuration(os.Getenv("FAKE_NITRO_CLI_BOOT_DELAY")); err == nil {
		delay = d
	}
	time.Sleep(delay) // waiting for the heartbeat, port bound
	ei.ProcessID = os.Getpid()
	ei.State = "RUNNING"
	ei.EnclaveID = fmt.Sprintf("i-fake%011d-enc%016x", os.Getpid(), time.Now().UnixNano())
	if ei.EnclaveCID == 0 {
		ei.EnclaveCID = uint64(16 + os.Getpid()%10000)
	}
	path := filepath.Join(state, "enclaves", ei.EnclaveID+".json")
	b, _ := json.Marshal(ei)
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil || os.Rename(path+".tmp", path) != nil {
		send(reply{Stderr: errorText("E19", "File operation failure.")})
		os.Exit(19)
	}
	cgroup, _ := os.ReadFile("/proc/self/cgroup")
	appendFile(filepath.Join(state, "calls.log"), fmt.Sprintf("%d enclave-process pid=%d cgroup=%s\n", time.Now().UnixNano(), os.Getpid(),
		strings.ReplaceAll(strings.TrimSpace(string(cgroup)), "\n", ";")))
	run := ei
	run.State, run.Flags = "", ""
	out, _ := json.MarshalIndent(run, "", "  ")
	lock.Close() // the heartbeat listener is closed once the enclave is ready
	send(reply{OK: true, Stdout: string(out) + "\n"})
	// The enclave process lives as long as its enclave (bounded, so a test
	// that forgets to terminate leaves nothing behind for long).
	for end := time.Now().Add(10 * time.Minute); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return
		}
	}
	_ = os.Remove(path)
}

func describe() {
	infos, hung := enclaves()
	if hung > 0 {
		wait := 100 * time.Millisecond
		if d, err := time.ParseDuration(os.Getenv("FAKE_NITRO_CLI_HUNG_WAIT")); err == nil {
			wait = d
		}
		time.Sleep(wait)
	}
	if infos == nil {
		infos = []enclaveInfo{}
	}
	logInfo("Sent command: Describe")
	out, _ := json.MarshalIndent(infos, "", "  ")
	fmt.Println(string(out))
	if hung > 0 {
		fmt.Fprintf(os.Stderr, "Failed connections: %d\n", hung)
		fail(39, "E39", "Enclave process connection failure. Such error appears when the enclave manager fails to connect to at least one enclave process for retrieving the description information.")
	}
}

func terminate(args []string) {
	if len(args) != 2 || args[0] != "--enclave-id" && args[0] != "--enclave-name" {
		fail(1, "E01", "Missing mandatory argument: --enclave-id or --enclave-name.")
	}
	id := args[1]
	if args[0] == "--enclave-name" {
		infos, _ := enclaves()
		var ids []string
		for _, e := range infos {
			if e.EnclaveName == args[1] {
				ids = append(ids, e.EnclaveID)
			}
		}
		switch len(ids) {
		case 0:
			fail(58, "E58", "Naming error. No enclave matched the given name.")
		case 1:
			id = ids[0]
		default:
			fail(58, "E58", "Naming error. Conflicting enclave names have been found.")
		}
	}
	path := filepath.Join(state, "enclaves", filepath.Base(id)+".json")
	b, err := os.ReadFile(path)
	var ei enclaveInfo
	if err != nil || json.Unmarshal(b, &ei) != nil {
		fail(11, "E11", "Socket error. Failed to connect to specific enclave process.")
	}
	if err := os.Remove(path); err != nil {
		fail(19, "E19", err.Error())
	}
	_ = os.Remove(strings.TrimSuffix(path, ".json") + ".hung")
	logInfo("Sent command: Terminate")
	out, _ := json.MarshalIndent(map[string]any{"EnclaveName": ei.EnclaveName, "EnclaveID": ei.EnclaveID, "Terminated": true}, "", "  ")
	fmt.Println(string(out))
}

func console(args []string) {
	if len(args) != 2 || args[0] != "--enclave-id" {
		fail(1, "E01", "Missing mandatory argument: --enclave-id.")
	}
	path := filepath.Join(state, "enclaves", filepath.Base(args[1])+".json")
	if _, err := os.Stat(path); err != nil {
		fail(11, "E11", "Socket error.")
	}
	fmt.Println("Successfully connected to the console.")
	for end := time.Now().Add(10 * time.Minute); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(path); err != nil {
			return
		}
	}
}
