package initproc

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// reaper is PID 1's only wait: it reaps every child (orphans re-parented to
// init included) and hands the status of the processes init started (the
// app, execs) to whoever waits for them.
type reaper struct {
	mu      sync.Mutex
	waiting map[int]chan syscall.WaitStatus
}

func newReaper() *reaper {
	r := &reaper{waiting: map[int]chan syscall.WaitStatus{}}
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, unix.SIGCHLD)
	go r.loop(sigchld)
	return r
}

func (r *reaper) loop(sigchld <-chan os.Signal) {
	tick := time.NewTicker(time.Second) // in case a SIGCHLD coalesced
	defer tick.Stop()
	for {
		r.reapAll()
		select {
		case <-sigchld:
		case <-tick.C:
		}
	}
}

func (r *reaper) reapAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		p, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err != nil || p <= 0 {
			return
		}
		if ch, ok := r.waiting[p]; ok {
			ch <- ws
			delete(r.waiting, p)
		}
	}
}

// spawn calls start, which starts one child and returns its pid, and
// returns a channel that receives the child's wait status. The reaper is
// held meanwhile, so that a child that exits at once is not reaped before
// it is registered.
func (r *reaper) spawn(start func() (int, error)) (int, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiting[pid] = ch
	return pid, ch, nil
}
