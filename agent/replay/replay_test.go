package replay

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/reason"
)

func TestWindowAndReplay(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch)
	c := New(Config{Clock: clock.Now})
	clock.Advance(10 * time.Second)
	if err := c.Check("a", "early", agenttest.Epoch.Unix()-1); !errors.Is(err, reason.StaleTimestamp) || !strings.Contains(err.Error(), "restart barrier") {
		t.Fatalf("before start: %v", err)
	}
	clock.Advance(50 * time.Second)
	now := clock.Now().Unix()
	cases := []struct {
		name   string
		sender string
		id     string
		ts     int64
		code   reason.Code
		detail string
	}{
		{"fresh", "a", "m1", now, "", ""},
		{"replayed", "a", "m1", now, reason.ReplayedMessage, "already received"},
		{"same id other sender", "b", "m1", now, "", ""},
		{"edge of window past", "a", "m2", now - 30, "", ""},
		{"stale", "a", "m3", now - 31, reason.StaleTimestamp, "old"},
		{"edge of window future", "a", "m4", now + 30, "", ""},
		{"future", "a", "m5", now + 31, reason.FutureTimestamp, "in the future"},
	}
	for _, tc := range cases {
		err := c.Check(tc.sender, tc.id, tc.ts)
		if tc.code == "" && err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.code != "" && (!errors.Is(err, tc.code) || !strings.Contains(err.Error(), tc.detail)) {
			t.Fatalf("%s: got %v, want %s %q", tc.name, err, tc.code, tc.detail)
		}
	}
	if c.Len() != 4 {
		t.Fatalf("len %d", c.Len())
	}
	// Entries expire with the window: the "now" ones after now+31, the future one after now+61.
	clock.Advance(32 * time.Second)
	if c.Len() != 1 {
		t.Fatalf("after the window: len %d", c.Len())
	}
	clock.Advance(30 * time.Second)
	if c.Len() != 0 {
		t.Fatalf("after the future entry's window: len %d", c.Len())
	}
}

func TestBounded(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch)
	c := New(Config{Clock: clock.Now, Capacity: 100, PerSender: 30})
	now := clock.Now().Unix()
	for i := range 30 {
		if err := c.Check("greedy", fmt.Sprint(i), now); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Check("greedy", "31", now); !errors.Is(err, reason.ReplayCacheFull) || !strings.Contains(err.Error(), "per-sender") {
		t.Fatalf("per-sender limit: %v", err)
	}
	for s := range 3 {
		for i := range 30 {
			if err := c.Check(fmt.Sprint("s", s), fmt.Sprint(i), now); err != nil && !(s == 2 && i >= 10) {
				t.Fatalf("s%d/%d: %v", s, i, err)
			} else if s == 2 && i >= 10 && (!errors.Is(err, reason.ReplayCacheFull) || !strings.Contains(err.Error(), "capacity")) {
				t.Fatalf("capacity: %v", err)
			}
		}
	}
	// Full: the live entries are kept (a replay of one of them is still refused as a replay).
	if err := c.Check("s0", "0", now); !errors.Is(err, reason.ReplayedMessage) {
		t.Fatalf("live entry evicted: %v", err)
	}
	clock.Advance(32 * time.Second)
	if err := c.Check("greedy", "new", clock.Now().Unix()); err != nil {
		t.Fatalf("space not reclaimed after the window: %v", err)
	}
	if c.Len() != 1 {
		t.Fatalf("len %d", c.Len())
	}
}

func BenchmarkCheck(b *testing.B) {
	c := New(Config{Capacity: 1 << 30, PerSender: 1 << 30})
	now := time.Now().Unix()
	for i := 0; b.Loop(); i++ {
		if err := c.Check("ed25519:sender", fmt.Sprint(i), now); err != nil {
			b.Fatal(err)
		}
	}
}

// TestStoredRestartBarrier: a store-and-forward envelope stamped up to the start plus the window may
// have been accepted before a restart and is refused; the next second is accepted. Session checks keep
// the start as their barrier (issue 12 item 4).
func TestStoredRestartBarrier(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch)
	c := New(Config{Clock: clock.Now})
	start := agenttest.Epoch.Unix()
	barrier := start + int64(DefaultWindow/time.Second) + 1
	clock.Advance(20 * time.Second)
	for _, ts := range []int64{start, start + 20, barrier - 1} {
		if err := c.CheckStored("a", "m", ts); !errors.Is(err, reason.StaleTimestamp) || !strings.Contains(err.Error(), "restart barrier") {
			t.Fatalf("stored envelope stamped %d (start %d): %v", ts, start, err)
		}
		if err := c.CheckStoredTime(ts); !errors.Is(err, reason.StaleTimestamp) {
			t.Fatalf("CheckStoredTime %d: %v", ts, err)
		}
	}
	if err := c.CheckStored("a", "m", barrier); err != nil {
		t.Fatalf("at the barrier: %v", err)
	}
	if err := c.Check("a", "session", start+20); err != nil {
		t.Fatalf("a session envelope after the start: %v", err)
	}
}
