package launcher

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
)

// MaxLogBytes bounds what the launcher keeps of its log and of a debug
// enclave's console in the bundle (which lives on /run, a tmpfs): LogFile
// and one rotated LogFile+".1" of at most MaxLogBytes/2 each. A debug app
// that floods its console only ever overwrites its own oldest output.
const MaxLogBytes = 1 << 20

// LogWriter appends to a log file that rotates to path+".1" when it would
// grow past half its limit, so the two files together never exceed the
// limit and always hold the newest output. It is safe for concurrent use
// (the launcher's logger and the console copy write to it at once). It is
// not an *os.File on purpose: a child process given it as stdout writes
// through a pipe and this cap, not straight to the file.
type LogWriter struct {
	mu   sync.Mutex
	path string
	part int64 // limit of one file
	f    *os.File
	size int64
	err  error
}

// OpenLog opens (appending to) the log at path, keeping at most max bytes
// in path and path+".1" together (max ≥ 2; MaxLogBytes for the launcher).
func OpenLog(path string, max int64) (*LogWriter, error) {
	if max < 2 {
		return nil, fmt.Errorf("log %s: limit %d is too small", path, max)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &LogWriter{path: path, part: max / 2, f: f, size: fi.Size()}
	if w.size > w.part {
		if err := w.rotate(); err != nil {
			f.Close()
			return nil, err
		}
	}
	return w, nil
}

// Write appends p, rotating first when p does not fit. Of a single write
// larger than a file's limit only its tail is kept. It reports len(p)
// written unless the file cannot be written.
func (w *LogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	n := len(p)
	if int64(len(p)) > w.part {
		p = p[int64(len(p))-w.part:]
	}
	if w.size+int64(len(p)) > w.part {
		if err := w.rotate(); err != nil {
			w.err = err
			return 0, err
		}
	}
	m, err := w.f.Write(p)
	w.size += int64(m)
	if err != nil {
		return 0, err
	}
	return n, nil
}

// rotate moves the current file to path.1 (replacing it) and starts an
// empty one.
func (w *LogWriter) rotate() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("rotating log %s: %w", w.path, err)
	}
	if err := os.Rename(w.path, w.path+".1"); err != nil {
		return fmt.Errorf("rotating log %s: %w", w.path, err)
	}
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("rotating log %s: %w", w.path, err)
	}
	w.f, w.size = f, 0
	return nil
}

// Close closes the current file.
func (w *LogWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = os.ErrClosed
	}
	return w.f.Close()
}

// ReadLogTail returns the last n bytes of the log at path (path+".1" then
// path, as LogWriter writes them), reading only those bytes however large
// the files are.
func ReadLogTail(path string, n int64) ([]byte, error) {
	cur, err := readTail(path, n)
	if err != nil {
		return nil, err
	}
	if int64(len(cur)) >= n {
		return cur, nil
	}
	old, err := readTail(path+".1", n-int64(len(cur)))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return append(old, cur...), nil
}

func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("log %s is not a regular file", path)
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	k, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:k], nil
}
