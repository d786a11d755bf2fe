package agent

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// Requests from init reach the host's handler one at a time and its
// answers come back to the right caller.
func TestNSMStream(t *testing.T) {
	c, g := pair(t)
	var mu sync.Mutex
	inFlight, maxInFlight := 0, 0
	go func() {
		_ = c.ServeNSM(func(req []byte) []byte {
			mu.Lock()
			inFlight++
			maxInFlight = max(maxInFlight, inFlight)
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			inFlight--
			mu.Unlock()
			return append([]byte("resp:"), req...)
		})
	}()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req := []byte{byte(i), 1, 2}
			resp, err := g.NSM(ctx, req)
			if err != nil || !bytes.Equal(resp, append([]byte("resp:"), req...)) {
				t.Errorf("request %d: %q %v", i, resp, err)
			}
		}()
	}
	wg.Wait()
	if maxInFlight != 1 {
		t.Errorf("%d requests reached the host at once, want 1", maxInFlight)
	}
}

// Without a host NSM stream, a call ends with ErrNoNSM when ctx ends.
func TestNSMWithoutHost(t *testing.T) {
	_, g := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := g.NSM(ctx, []byte{1}); !errors.Is(err, ErrNoNSM) {
		t.Errorf("got %v, want ErrNoNSM", err)
	}
}

// The host closing the channel ends ServeNSM without an error, and a
// guest call fails instead of hanging.
func TestNSMChannelClosed(t *testing.T) {
	c, g := pair(t)
	done := make(chan error, 1)
	go func() { done <- c.ServeNSM(func(req []byte) []byte { return req }) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := g.NSM(ctx, []byte{1}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeNSM: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeNSM did not return")
	}
	if _, err := g.NSM(ctx, []byte{2}); err == nil {
		t.Error("a call after the host left succeeded")
	}
}
