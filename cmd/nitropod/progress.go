package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// transferTick is how often a running S3 transfer is reported.
var transferTick = 2 * time.Second

// watchTransfer reports a running `eif push` or `eif pull` on stderr every
// transferTick when stderr is a terminal (nothing otherwise: the command's
// JSON result on stdout stays the only output). done, when not nil, gives
// the bytes transferred so far. The returned func stops the reports.
func watchTransfer(what string, done func() int64) func() {
	if !isTerminal(os.Stderr) {
		return func() {}
	}
	start := time.Now()
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(transferTick)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				line := fmt.Sprintf("nitropod: [%5.1fs] %s", time.Since(start).Seconds(), what)
				if done != nil {
					line += fmt.Sprintf(": %.1f MiB", float64(done())/(1<<20))
				}
				fmt.Fprintln(os.Stderr, line)
			}
		}
	}()
	return func() { close(stop); <-finished }
}

// pushWhat names an upload: the file and its size.
func pushWhat(file string) string {
	if fi, err := os.Stat(file); err == nil {
		return fmt.Sprintf("uploading %s (%.1f MiB)", filepath.Base(file), float64(fi.Size())/(1<<20))
	}
	return "uploading " + filepath.Base(file)
}

// pulled is the size of Pull's partial files for dst (it downloads into
// .NAME.part-* next to dst and renames it at the end).
func pulled(dst string) func() int64 {
	pattern := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".part-*")
	return func() int64 {
		var n int64
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil {
				n += fi.Size()
			}
		}
		return n
	}
}
