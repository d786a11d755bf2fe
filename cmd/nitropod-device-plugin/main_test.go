package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitropod/nitropod/deviceplugin"
	"github.com/nitropod/nitropod/internal/testenv"
)

// TestBinaryFakeNodeAndSIGTERM runs the built binary the way the end-to-end
// cluster does: fake-node writes a FAKE Nitro host, the plugin serves it
// with --sysfs-root/--dev-root, and SIGTERM stops it with its sockets
// removed.
func TestBinaryFakeNodeAndSIGTERM(t *testing.T) {
	testenv.Integration(t)
	bin := testenv.Binary(t, "nitropod-device-plugin")
	dir := t.TempDir()
	sysfs, dev, plugins := filepath.Join(dir, "sys"), filepath.Join(dir, "dev"), filepath.Join(dir, "dp")
	out, err := exec.Command(bin, "fake-node", "--sysfs-root", sysfs, "--dev-root", dev, "--cpus", "8", "--pool", "1-3,5-7", "--memory-2m-mib", "1024").CombinedOutput()
	if err != nil {
		t.Fatalf("fake-node: %v\n%s", err, out)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var logs bytes.Buffer
	cmd := exec.Command(bin, "--sysfs-root", sysfs, "--dev-root", dev, "--device-plugin-dir", plugins,
		"--config", filepath.Join(dir, "absent.yaml"), "--metrics-addr", addr)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var (
		exited  bool
		exitErr error
	)
	wait := func(d time.Duration) bool {
		select {
		case exitErr = <-done:
			exited = true
		case <-time.After(d):
		}
		return exited
	}
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			wait(10 * time.Second)
		}
	})

	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if strings.Contains(body, `nitropod_deviceplugin_allocatable{resource="nitropod.io/enclave-memory"} 16`) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics with 16 memory blocks within 10s: %v\n%s\nlogs:\n%s", err, body, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{
		`nitropod_deviceplugin_allocatable{resource="nitropod.io/enclave-cpu"} 6`,
		`nitropod_deviceplugin_allocatable{resource="nitropod.io/enclave"} 4`,
		`nitropod_deviceplugin_registered{resource="nitropod.io/enclave-cpu"} 0`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for _, r := range deviceplugin.Resources {
		if _, err := os.Stat(filepath.Join(plugins, deviceplugin.SocketName(r))); err != nil {
			t.Errorf("socket of %s: %v", r, err)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !wait(10 * time.Second) {
		t.Fatalf("still running 10s after SIGTERM\n%s", logs.String())
	}
	if exitErr != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", exitErr, logs.String())
	}
	left, _ := filepath.Glob(filepath.Join(plugins, "*.sock"))
	if len(left) != 0 {
		t.Errorf("sockets left after SIGTERM: %v", left)
	}
	if !strings.Contains(logs.String(), "device plugin stopping") {
		t.Errorf("logs do not show a clean stop:\n%s", logs.String())
	}
}
