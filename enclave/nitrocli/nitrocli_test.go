package nitrocli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/agent"
)

const testID = "i-05f6ed443aEXAMPLE-enc173c1b7f8EXAMPLE"

func testdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeNitroCLI stands in for nitro-cli, which cannot run without Nitro
// hardware: it records the command lines and answers each subcommand with
// outputs from testdata.
type fakeNitroCLI struct {
	mu       sync.Mutex
	calls    [][]string
	answers  map[string][]answer // subcommand → answers in order; the last repeats
	consoles int
	stopped  int
}

type answer struct {
	stdout, stderr []byte
	err            error
}

func (f *fakeNitroCLI) Output(ctx context.Context, args []string) ([]byte, []byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, args)
	as := f.answers[args[0]]
	if len(as) == 0 {
		return nil, []byte("[ E00 ] no answer recorded"), errors.New("exit status 1")
	}
	a := as[0]
	if len(as) > 1 {
		f.answers[args[0]] = as[1:]
	}
	return a.stdout, a.stderr, a.err
}

func (f *fakeNitroCLI) Stream(args []string, w io.Writer) (func(), error) {
	f.mu.Lock()
	f.calls = append(f.calls, args)
	f.consoles++
	f.mu.Unlock()
	b, err := os.ReadFile(filepath.Join("testdata", "console.stdout"))
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	return func() {
		f.mu.Lock()
		f.stopped++
		f.mu.Unlock()
	}, nil
}

func (f *fakeNitroCLI) setAnswer(cmd string, a answer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[cmd] = []answer{a}
}

func (f *fakeNitroCLI) callLog() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.calls...)
}

func eifFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "app.eif")
	if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunArgs(t *testing.T) {
	tests := []struct {
		name string
		req  enclave.Request
		size int64
		want []string
		err  string
	}{
		{name: "cpu ids", req: enclave.Request{Name: "c0ffee", EIFPath: "/x.eif", CPUs: 2, CPUIDs: []int{1, 3}, MemoryMiB: 512}, size: 100 << 20,
			want: []string{"run-enclave", "--eif-path", "/x.eif", "--memory", "512", "--cpu-ids", "1", "3", "--enclave-name", "c0ffee"}},
		{name: "cpu count, cid, debug", req: enclave.Request{EIFPath: "/x.eif", CPUs: 4, MemoryMiB: 2048, CID: 20, Debug: true}, size: 1 << 20,
			want: []string{"run-enclave", "--eif-path", "/x.eif", "--memory", "2048", "--cpu-count", "4", "--enclave-cid", "20", "--debug-mode"}},
		{name: "memory below 4x", req: enclave.Request{EIFPath: "/x.eif", CPUs: 2, MemoryMiB: 256}, size: 100 << 20,
			err: "enclave memory 256 MiB is too small for a 100.0 MiB EIF"},
		{name: "memory below minimum", req: enclave.Request{EIFPath: "/x.eif", CPUs: 2, MemoryMiB: 32}, size: 1 << 10, err: "at least 64 MiB"},
		{name: "cpu ids do not match", req: enclave.Request{EIFPath: "/x.eif", CPUs: 2, CPUIDs: []int{1}, MemoryMiB: 512}, size: 1, err: "names 1 CPU ids"},
		{name: "no cpus", req: enclave.Request{EIFPath: "/x.eif", MemoryMiB: 512}, size: 1, err: "at least 1 vCPU"},
		{name: "reserved cid", req: enclave.Request{EIFPath: "/x.eif", CPUs: 2, MemoryMiB: 512, CID: 3}, size: 1, err: "CID 3 is reserved"},
		{name: "no eif", req: enclave.Request{CPUs: 2, MemoryMiB: 512}, size: 1, err: "no EIF path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RunArgs(tc.req, tc.size)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("RunArgs error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("args (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseRecordedOutputs(t *testing.T) {
	ri, err := ParseRun(testdata(t, "run-enclave.stdout"))
	if err != nil {
		t.Fatal(err)
	}
	want := &RunInfo{EnclaveName: "c0ffee", EnclaveID: testID, ProcessID: 7077, EnclaveCID: 16, NumberOfCPUs: 2, CPUIDs: []int{1, 3}, MemoryMiB: 512}
	if diff := cmp.Diff(want, ri); diff != "" {
		t.Errorf("run-enclave (-want +got):\n%s", diff)
	}
	// Progress text before the JSON (older versions printed it on stdout).
	if _, err := ParseRun(append(testdata(t, "run-enclave.stderr"), testdata(t, "run-enclave.stdout")...)); err != nil {
		t.Errorf("run-enclave output after progress lines: %v", err)
	}

	ds, err := ParseDescribe(testdata(t, "describe-enclaves-running.stdout"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].State != StateRunning || ds[0].Flags != FlagsDebug || ds[1].Flags != "NONE" ||
		ds[0].Measurements["PCR0"] == "" || ds[1].EnclaveCID != 17 || !cmp.Equal(ds[1].CPUIDs, []int{5, 7}) {
		t.Errorf("describe-enclaves parsed as %+v", ds)
	}
	if ds, err := ParseDescribe(testdata(t, "describe-enclaves-empty.stdout")); err != nil || len(ds) != 0 {
		t.Errorf("empty describe-enclaves: %v, %v", ds, err)
	}
	ti, err := ParseTerminate(testdata(t, "terminate-enclave.stdout"))
	if err != nil || !ti.Terminated || ti.EnclaveID != testID {
		t.Errorf("terminate-enclave: %+v, %v", ti, err)
	}

	for _, bad := range []string{"", "Start allocating memory...", `{"EnclaveID": ""}`, `{"EnclaveID": "x", "EnclaveCID": 4294967296}`, `{"EnclaveID": 1}`} {
		if _, err := ParseRun([]byte(bad)); err == nil {
			t.Errorf("ParseRun(%q) succeeded", bad)
		}
	}
	if got := Summary(string(testdata(t, "run-enclave-E26.stderr"))); !strings.HasPrefix(got, "[ E26 ] Insufficient memory requested.") {
		t.Errorf("Summary = %q", got)
	}
}

func TestBootDescribeTerminate(t *testing.T) {
	fake := &fakeNitroCLI{answers: map[string][]answer{
		"run-enclave":       {{stdout: testdata(t, "run-enclave.stdout"), stderr: testdata(t, "run-enclave.stderr")}},
		"describe-enclaves": {{stdout: testdata(t, "describe-enclaves-running.stdout")}},
		"terminate-enclave": {{stdout: testdata(t, "terminate-enclave.stdout")}},
	}}
	h := newFakeVsockHost()
	cfg := Config{Runner: fake, PollInterval: 10 * time.Millisecond}
	h.config(&cfg)
	b := New(cfg)
	var console bytes.Buffer
	eifPath := eifFile(t, 1<<20)
	e, err := b.Boot(context.Background(), enclave.Request{Name: "c0ffee", EIFPath: eifPath, CPUs: 2, CPUIDs: []int{1, 3}, MemoryMiB: 512, Debug: true, Console: &console, CID: 16})
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	if e.ID() != testID || e.CID() != 16 {
		t.Errorf("enclave %s CID %d, want %s CID 16", e.ID(), e.CID(), testID)
	}
	// Init connects to the launcher's port for CID 16.
	if _, err := h.connect(16, agent.ChannelPortBase+16); err != nil {
		t.Fatalf("connecting as the enclave: %v", err)
	}
	c, err := e.Dial(context.Background())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if peer, _ := peerCID(c.RemoteAddr()); peer != 16 {
		t.Errorf("Dial returned a connection from CID %d, want 16", peer)
	}
	if _, err := e.Dial(context.Background()); err == nil {
		t.Error("second Dial succeeded")
	}
	if !strings.Contains(console.String(), "Successfully connected to the console.") {
		t.Errorf("console output %q", console.String())
	}
	select {
	case <-e.Done():
		t.Fatal("Done closed while describe-enclaves reports RUNNING")
	case <-time.After(50 * time.Millisecond):
	}
	// Now describe-enclaves reports TERMINATING: Done closes.
	fake.setAnswer("describe-enclaves", answer{stdout: testdata(t, "describe-enclaves-terminating.stdout")})
	select {
	case <-e.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after describe-enclaves reported TERMINATING")
	}
	if err := e.Terminate(context.Background()); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
	if err := e.Terminate(context.Background()); err != nil {
		t.Fatalf("second Terminate: %v", err)
	}
	calls := fake.callLog()
	wantFirst := [][]string{
		{"run-enclave", "--eif-path", eifPath, "--memory", "512", "--cpu-ids", "1", "3", "--enclave-cid", "16", "--enclave-name", "c0ffee", "--debug-mode"},
		{"console", "--enclave-id", testID},
	}
	if diff := cmp.Diff(wantFirst, calls[:2]); diff != "" {
		t.Errorf("first commands (-want +got):\n%s", diff)
	}
	if last := calls[len(calls)-1]; !cmp.Equal(last, []string{"terminate-enclave", "--enclave-id", testID}) {
		t.Errorf("last command %v, want terminate-enclave", last)
	}
	terminates := 0
	for _, c := range calls {
		if c[0] == "terminate-enclave" {
			terminates++
		}
	}
	if terminates != 1 || fake.stopped != 1 {
		t.Errorf("%d terminate-enclave calls, console stopped %d times; want 1 and 1", terminates, fake.stopped)
	}
}

func TestBootErrors(t *testing.T) {
	fake := &fakeNitroCLI{answers: map[string][]answer{
		"run-enclave": {{stderr: testdata(t, "run-enclave-E26.stderr"), err: errors.New("exit status 26")}},
	}}
	cfg := Config{Runner: fake}
	newFakeVsockHost().config(&cfg)
	b := New(cfg)
	_, err := b.Boot(context.Background(), enclave.Request{EIFPath: eifFile(t, 1<<20), CPUs: 2, MemoryMiB: 256})
	var ce *CommandError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "[ E26 ] Insufficient memory requested.") || strings.Contains(err.Error(), "support ticket") {
		t.Errorf("Boot error %v, want the E26 line only", err)
	}
	// The 4× rule is checked before nitro-cli runs.
	_, err = b.Boot(context.Background(), enclave.Request{EIFPath: eifFile(t, 200<<20), CPUs: 2, MemoryMiB: 512})
	if err == nil || !strings.Contains(err.Error(), "at least 800 MiB") {
		t.Errorf("Boot with too little memory: %v", err)
	}
	if n := len(fake.callLog()); n != 1 {
		t.Errorf("nitro-cli ran %d times, want 1 (the memory check runs first)", n)
	}
	if _, err := b.Boot(context.Background(), enclave.Request{EIFPath: filepath.Join(t.TempDir(), "missing.eif"), CPUs: 2, MemoryMiB: 512}); err == nil {
		t.Error("Boot of a missing EIF succeeded")
	}
}

func TestTerminateAlreadyGone(t *testing.T) {
	fake := &fakeNitroCLI{answers: map[string][]answer{
		"run-enclave":       {{stdout: testdata(t, "run-enclave.stdout")}},
		"describe-enclaves": {{stdout: testdata(t, "describe-enclaves-empty.stdout")}},
		"terminate-enclave": {{stderr: []byte("[ E39 ] Enclave process connection failure."), err: errors.New("exit status 39")}},
	}}
	cfg := Config{Runner: fake, PollInterval: time.Hour}
	newFakeVsockHost().config(&cfg)
	b := New(cfg)
	e, err := b.Boot(context.Background(), enclave.Request{EIFPath: eifFile(t, 1<<20), CPUs: 2, MemoryMiB: 512, CID: 16})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Terminate(context.Background()); err != nil {
		t.Errorf("Terminate of an enclave nitro-cli no longer lists: %v", err)
	}
	select {
	case <-e.Done():
	default:
		t.Error("Done not closed after Terminate")
	}
}

func FuzzParseRun(f *testing.F) {
	for _, n := range []string{"run-enclave.stdout", "describe-enclaves-running.stdout", "terminate-enclave.stdout"} {
		b, err := os.ReadFile(filepath.Join("testdata", n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if ri, err := ParseRun(b); err == nil && (ri.EnclaveID == "" || ri.EnclaveCID == 0 || ri.EnclaveCID > 0xFFFFFFFF) {
			t.Fatalf("accepted %+v", ri)
		}
		_, _ = ParseDescribe(b)
		_, _ = ParseTerminate(b)
	})
}

func TestTerminateID(t *testing.T) {
	tests := []struct {
		name   string
		answer map[string][]answer
		err    string
	}{
		{name: "terminated", answer: map[string][]answer{"terminate-enclave": {{stdout: testdata(t, "terminate-enclave.stdout")}}}},
		{name: "already gone", answer: map[string][]answer{
			"terminate-enclave": {{stderr: []byte("[ E39 ] Enclave process connection failure."), err: errors.New("exit status 39")}},
			"describe-enclaves": {{stdout: testdata(t, "describe-enclaves-empty.stdout")}},
		}},
		{name: "fails while still listed", answer: map[string][]answer{
			"terminate-enclave": {{stderr: []byte("[ E39 ] Enclave process connection failure."), err: errors.New("exit status 39")}},
			"describe-enclaves": {{stdout: testdata(t, "describe-enclaves-running.stdout")}},
		}, err: "[ E39 ] Enclave process connection failure."},
		{name: "not terminated", answer: map[string][]answer{"terminate-enclave": {{stdout: []byte(`{"EnclaveID": "` + testID + `", "Terminated": false}`)}}},
			err: "nitro-cli answered"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeNitroCLI{answers: tc.answer}
			err := New(Config{Runner: fake}).TerminateID(context.Background(), testID)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("TerminateID = %v, want %q", err, tc.err)
			}
			if got := fake.callLog()[0]; !cmp.Equal(got, []string{"terminate-enclave", "--enclave-id", testID}) {
				t.Errorf("first command %v", got)
			}
		})
	}
}
