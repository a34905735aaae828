package custody

import (
	"context"
	"errors"
	"testing"
	"time"
)

// keyFiles counts the keys the identity's keystore holds.
func keyFiles(t *testing.T, c *Custody) int {
	t.Helper()
	ks, err := c.keystore(context.Background(), c.KeystoreURI())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ks.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// TestScheduleRotatesAndDestroys: with rotation.interval set, the schedule rotates once the current key
// is that old (through Change, like agentctl rotate), waits exactly until the retired key's grace period
// ends, then destroys it: the keystore holds one key fewer.
func TestScheduleRotatesAndDestroys(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c := e.init(false)
	const interval, grace = 90 * 24 * time.Hour, time.Hour
	var changes, rotations, destroyed int
	var rotateErr error
	s := &Schedule{Custody: c, Settings: func() ScheduleSettings { return ScheduleSettings{Interval: interval, Grace: grace} },
		Change: func(ctx context.Context, op func(context.Context) error) error {
			changes++
			return op(ctx)
		},
		OnRotate:  func(g uint64, err error) { rotations++; rotateErr = err },
		OnDestroy: func(g Generation) { destroyed++ },
		MaxWait:   10000 * time.Hour,
	}
	if n := keyFiles(t, c); n != 2 {
		t.Fatalf("after init the keystore holds %d keys, want 2", n)
	}
	if w := s.Step(ctx); w != interval || changes != 0 || c.Current().Generation != 0 {
		t.Fatalf("fresh key: wait %v (want %v), %d changes, generation %d", w, interval, changes, c.Current().Generation)
	}
	e.advance(interval - time.Second)
	if w := s.Step(ctx); w != time.Second || changes != 0 {
		t.Fatalf("a second before the rotation: wait %v, %d changes", w, changes)
	}
	e.advance(time.Second)
	if w := s.Step(ctx); w != grace {
		t.Fatalf("after the rotation: wait %v, want the grace period %v", w, grace)
	}
	if rotations != 1 || rotateErr != nil || changes != 1 || c.Current().Generation != 1 {
		t.Fatalf("the rotation: %d rotations (err %v), %d changes, generation %d", rotations, rotateErr, changes, c.Current().Generation)
	}
	if k := c.Keys(); k[0].State != Retired || !k[0].RetiredUntil.Equal(e.clock().Add(grace)) {
		t.Fatalf("generation 0 after the scheduled rotation: %+v", k[0])
	}
	if n := keyFiles(t, c); n != 3 {
		t.Fatalf("after the rotation the keystore holds %d keys, want 3", n)
	}
	if !c.CurrentSince().Equal(e.clock().Truncate(time.Second)) {
		t.Fatalf("CurrentSince %v, want the rotation's time %v", c.CurrentSince(), e.clock())
	}
	e.advance(grace)
	if w := s.Step(ctx); w != interval-grace {
		t.Fatalf("after the destruction: wait %v, want until the next rotation %v", w, interval-grace)
	}
	if destroyed != 1 || changes != 2 || c.Keys()[0].State != Destroyed {
		t.Fatalf("destruction: %d destroyed, %d changes, generation 0 %+v", destroyed, changes, c.Keys()[0])
	}
	if n := keyFiles(t, c); n != 2 {
		t.Fatalf("after the destruction the keystore holds %d keys, want 2", n)
	}
}

// TestScheduleOff: interval 0 rotates nothing, however old the key; a key retired by another rotation
// (agentctl rotate) is still destroyed when its grace period ends.
func TestScheduleOff(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c := e.init(false)
	s := &Schedule{Custody: c, Settings: func() ScheduleSettings { return ScheduleSettings{} }, MaxWait: time.Minute}
	e.advance(10 * 365 * 24 * time.Hour)
	if w := s.Step(ctx); w != time.Minute || c.Current().Generation != 0 {
		t.Fatalf("interval 0: wait %v, generation %d", w, c.Current().Generation)
	}
	if _, err := c.Rotate(ctx, RotateRequest{Grace: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if w := s.Step(ctx); w != 30*time.Second || c.Keys()[0].State != Retired {
		t.Fatalf("a key retired by hand: wait %v, generation 0 %+v", w, c.Keys()[0])
	}
	e.advance(30 * time.Second)
	s.Step(ctx)
	if c.Keys()[0].State != Destroyed || c.Current().Generation != 1 {
		t.Fatalf("after its grace period: %+v, generation %d", c.Keys()[0], c.Current().Generation)
	}
}

// TestScheduleFailureWaits: a rotation that fails (here the holder's Change refuses) is reported, changes
// nothing, and is tried again after RetryAfter, not in a busy loop.
func TestScheduleFailureWaits(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c := e.init(false)
	boom := errors.New("keystore unplugged")
	var got error
	s := &Schedule{Custody: c, Settings: func() ScheduleSettings { return ScheduleSettings{Interval: time.Hour, Grace: time.Hour} },
		Change:   func(context.Context, func(context.Context) error) error { return boom },
		OnRotate: func(g uint64, err error) { got = err }, RetryAfter: 7 * time.Second}
	e.advance(2 * time.Hour)
	if w := s.Step(ctx); w != 7*time.Second || !errors.Is(got, boom) || c.Current().Generation != 0 {
		t.Fatalf("failed rotation: wait %v, OnRotate %v, generation %d", w, got, c.Current().Generation)
	}
}
