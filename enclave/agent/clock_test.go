package agent

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// recvLoop runs the host's Recv until the channel closes and returns what
// Recv handed out (the messages the Client does not serve itself).
func recvLoop(c *Client) <-chan Message {
	out := make(chan Message, 16)
	go func() {
		defer close(out)
		for {
			m, err := c.Recv()
			if err != nil {
				return
			}
			out <- m
		}
	}()
	return out
}

func TestClockOffset(t *testing.T) {
	c, g := pair(t)
	recvLoop(c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 5 {
		off, rtt, err := g.ClockOffset(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Both ends read the same clock: the offset is the estimate's error,
		// which is at most half the round trip.
		if rtt <= 0 || rtt > time.Second {
			t.Errorf("round trip %v, want in (0, 1s]", rtt)
		}
		if abs(off) > rtt/2+time.Millisecond {
			t.Errorf("offset %v between two ends of one clock, want within half the round trip %v", off, rtt)
		}
	}
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func TestStatsReachHostBetweenMessages(t *testing.T) {
	c, g := pair(t)
	got := make(chan Stats, 4)
	c.OnStats(func(s Stats) { got <- s })
	msgs := recvLoop(c)
	want := Stats{CPUNanos: 3e9, UserNanos: 2e9, SystemNanos: 1e9, MemoryTotal: 512 << 20, MemoryUsage: 100 << 20, InactiveFile: 10 << 20, Anon: 60 << 20, Processes: 3}
	if err := g.SendStats(want); err != nil {
		t.Fatal(err)
	}
	if err := g.Started(42); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != want {
			t.Errorf("stats %+v, want %+v", s, want)
		}
		if ws := s.WorkingSet(); ws != 90<<20 {
			t.Errorf("working set %d, want %d", ws, 90<<20)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stats never reached OnStats")
	}
	// The stats message is served by the Client; Recv hands out the next.
	select {
	case m := <-msgs:
		if m.Type != MsgStarted || m.PID != 42 {
			t.Errorf("Recv gave %+v, want started 42", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Recv did not return the message after the stats")
	}
}

// TestOlderHostHasNoFeatures: a host whose hello names no features (a
// nitropod from before them) is never sent clock or stats messages, which
// it would take for protocol errors.
func TestOlderHostHasNoFeatures(t *testing.T) {
	h, e := net.Pipe()
	g, err := NewGuest(e, GuestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	sess, err := yamux.Client(h, muxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	s, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(s, Header{Kind: KindControl}); err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(s, Message{Type: MsgHello, Version: Version}); err != nil {
		t.Fatal(err)
	}
	var m Message
	if err := ReadFrame(s, &m); err != nil || m.Type != MsgHello {
		t.Fatalf("hello answer %+v, %v", m, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := g.ClockOffset(ctx); !errors.Is(err, ErrNoFeature) {
		t.Errorf("ClockOffset with an older host: %v, want ErrNoFeature", err)
	}
	if err := g.SendStats(Stats{}); !errors.Is(err, ErrNoFeature) {
		t.Errorf("SendStats with an older host: %v, want ErrNoFeature", err)
	}
}

func TestWorkingSetNeverNegative(t *testing.T) {
	if ws := (Stats{MemoryUsage: 5, InactiveFile: 9}).WorkingSet(); ws != 0 {
		t.Errorf("working set %d, want 0", ws)
	}
}
