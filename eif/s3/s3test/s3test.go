// Package s3test starts a real S3-compatible server (versitygw, built by
// `make tools`) on loopback for integration tests: a random port, a private
// data directory, fixed root credentials, stopped by t.Cleanup.
package s3test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nitropod/nitropod/internal/testenv"
)

// Credentials of the server's root user.
const (
	AccessKey = "nitropodtest"
	SecretKey = "nitropodtestsecret"
)

// Server is a running versitygw.
type Server struct {
	// Endpoint is the server's URL, http://127.0.0.1:PORT.
	Endpoint string
	// Dir is the posix backend's directory (one subdirectory per bucket).
	Dir string

	addr string
	bin  string
	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *lockedBuffer
}

// Start starts versitygw; a missing binary is testenv.Missing.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := testenv.Binary(t, "versitygw")
	s := &Server{Dir: filepath.Join(t.TempDir(), "data"), bin: bin}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	// versitygw cannot report a port the kernel chose: take a free one, and
	// another if some process took it before versitygw could bind it.
	for attempt := 1; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.addr = l.Addr().String()
		l.Close()
		s.Endpoint = "http://" + s.addr
		err = s.Restart()
		if err == nil {
			return s
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
	}
}

// Restart starts the server again on the same address and directory after Stop.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	s.out = &lockedBuffer{}
	cmd := exec.Command(s.bin, "--access", AccessKey, "--secret", SecretKey, "--port", s.addr, "--quiet", "posix", s.Dir)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting versitygw: %w", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(15 * time.Second)
	_, portStr, _ := net.SplitHostPort(s.addr)
	port, _ := strconv.Atoi(portStr)
	for {
		// Ready when versitygw itself listens on the port (a dial alone
		// could reach a process that took the port first).
		if listensOn(cmd.Process.Pid, port) {
			return nil
		}
		if strings.Contains(s.out.String(), "address already in use") {
			s.stopLocked()
			return fmt.Errorf("versitygw could not listen on %s: address already in use", s.addr)
		}
		if time.Now().After(deadline) {
			s.stopLocked()
			return fmt.Errorf("versitygw did not listen on %s within 15s: %s", s.addr, s.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the server (SIGKILL, as a crash) and waits for it. Calling it
// again is a no-op.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Credentials are the root user's static credentials.
func Credentials() aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, "")
}

// CreateBucket creates a bucket with a plain SDK client.
func (s *Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	c := awss3.New(awss3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  Credentials(),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
}

// listensOn reports whether process pid holds a TCP socket listening on
// port (its /proc/PID/fd sockets against /proc/PID/net/tcp).
func listensOn(pid, port int) bool {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	inodes := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			// sl local_address rem_address st ... inode (field 9)
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			_, hex, ok := strings.Cut(f[1], ":")
			if p, err := strconv.ParseUint(hex, 16, 16); ok && err == nil && int(p) == port {
				return true
			}
		}
	}
	return false
}

// lockedBuffer is versitygw's output, written by exec's copying goroutine
// while Restart reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
