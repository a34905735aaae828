package sessions_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/sessions"
	"github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports/memory"
)

// A target whose dials fail is re-dialled after delays that double from the policy's Min (with jitter,
// never below half the step); the error of the last attempt is reported while it fails; the session is
// established once a dial gets through, and the attempts are counted.
func TestRedialBacksOffAfterDialFailures(t *testing.T) {
	net := memory.NewNetwork()
	policy := backoff.Policy{Min: 40 * time.Millisecond, Max: time.Second}
	a := newNode(t, net, nodeOpts{instantWaits: true, redial: policy})
	b := newNode(t, net, nodeOpts{})
	net.FailDials(b.addr, errTest, errTest, errTest, errTest)
	var lastErrs []string
	a.after = func(d time.Duration) <-chan time.Time {
		a.mu.Lock()
		a.waits = append(a.waits, d)
		a.mu.Unlock()
		lastErrs = append(lastErrs, a.m.TargetStatuses()[b.ID()].LastError)
		c := make(chan time.Time, 1)
		c <- time.Now()
		return c
	}
	a.m.AddTarget(b.ID(), b.address(), "connect")
	// The dial loop counts an attempt after the dial returns, and the session is visible before that:
	// wait for both.
	eventually(t, func() string { return fmt.Sprintf("targets %+v", a.m.TargetStatuses()) },
		func() bool {
			return a.m.Session(b.ID()) != nil && b.m.Session(a.ID()) != nil && a.m.TargetStatuses()[b.ID()].Attempts >= 5
		})

	if got := net.Dials(b.addr); got != 5 {
		t.Errorf("%d dials, want 5 (4 failed, then the one that got through)", got)
	}
	ts := a.m.TargetStatuses()[b.ID()]
	if ts.Attempts != 5 || ts.LastError != "" || ts.Source != "connect" {
		t.Errorf("target status %+v, want 5 attempts, no error left, source connect", ts)
	}
	waits := a.recordedWaits()
	if len(waits) != 4 {
		t.Fatalf("waits %v, want one per failed attempt (4)", waits)
	}
	for n, d := range waits {
		step := policy.Step(n)
		if d < step/2 || d > step {
			t.Errorf("wait %d is %v, want within [%v, %v] (Min doubling per failure)", n, d, step/2, step)
		}
	}
	for i, e := range lastErrs {
		if !strings.Contains(e, memory.Name+" "+b.addr) || !strings.Contains(e, memory.ErrRefused.Error()) || !strings.Contains(e, errTest.Error()) {
			t.Errorf("last error reported while failing (attempt %d): %q, want the address, %q and %q", i+1, e, memory.ErrRefused, errTest)
		}
	}
}

// After a run of failures, a success resets the backoff: the next failure waits Min again.
func TestRedialBackoffResetsAfterSuccess(t *testing.T) {
	net := memory.NewNetwork()
	policy := backoff.Policy{Min: 40 * time.Millisecond, Max: time.Second}
	a := newNode(t, net, nodeOpts{instantWaits: true, redial: policy})
	b := newNode(t, net, nodeOpts{})
	net.FailDials(b.addr, errTest, errTest, errTest)
	a.m.AddTarget(b.ID(), b.address(), "connect")
	eventually(t, func() string { return "first session" }, func() bool { return sessionID(a, b) != "" && sessionID(b, a) != "" })
	first := sessionID(a, b)
	net.FailDials(b.addr, errTest)
	if err := b.m.Session(a.ID()).Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string { return fmt.Sprintf("waits %v", a.recordedWaits()) }, func() bool {
		s := sessionID(a, b)
		return s != "" && s != first && len(a.recordedWaits()) == 4
	})
	if d := a.recordedWaits()[3]; d > policy.Step(0) {
		t.Errorf("first wait after a success is %v, want at most Min %v (the backoff restarts)", d, policy.Step(0))
	}
}

// A session that ends (the peer closed it, or the network broke every connection) is re-dialled: a new
// session with another ID, on both sides.
func TestRedialAfterSessionEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(net *memory.Network, a, b *node)
	}{
		{"PeerClosed", func(_ *memory.Network, a, b *node) { _ = b.m.Session(a.ID()).Close() }},
		{"LocalClosed", func(_ *memory.Network, a, b *node) { _ = a.m.Session(b.ID()).Close() }},
		{"NetworkBroke", func(net *memory.Network, _, _ *node) { net.Break() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := memory.NewNetwork()
			a := newNode(t, net, nodeOpts{})
			b := newNode(t, net, nodeOpts{})
			a.m.AddTarget(b.ID(), b.address(), "bootstrap")
			eventually(t, func() string { return "first session" }, func() bool { return sessionID(a, b) != "" && sessionID(b, a) != "" })
			first := sessionID(a, b)
			tc.end(net, a, b)
			eventually(t, func() string {
				return fmt.Sprintf("sessions %q / %q, first %q, targets %+v", sessionID(a, b), sessionID(b, a), first, a.m.TargetStatuses())
			}, func() bool {
				s := sessionID(a, b)
				return s != "" && s != first && sessionID(b, a) == s
			})
			if ps := a.m.Session(b.ID()); ps.Session().Role() != session.Initiator {
				t.Errorf("the re-dialled session's local role is %s, want initiator", ps.Session().Role())
			}
			if got := net.Dials(b.addr); got < 2 {
				t.Errorf("%d dials, want a second one", got)
			}
		})
	}
}

// A removed target is not re-dialled: its session may end for good.
func TestRemovedTargetNotRedialled(t *testing.T) {
	net := memory.NewNetwork()
	a := newNode(t, net, nodeOpts{})
	b := newNode(t, net, nodeOpts{})
	a.m.AddTarget(b.ID(), b.address(), "connect")
	eventually(t, func() string { return "session" }, func() bool { return sessionID(b, a) != "" })
	a.m.RemoveTarget(b.ID())
	_ = b.m.Session(a.ID()).Close()
	eventually(t, func() string { return "session ended" }, func() bool { return a.m.Live() == 0 && b.m.Live() == 0 })
	if n := net.Dials(b.addr); n != 1 {
		t.Errorf("%d dials after the target was removed, want the first one only", n)
	}
	if len(a.m.TargetStatuses()) != 0 {
		t.Errorf("targets %+v, want none", a.m.TargetStatuses())
	}
}

// settled checks that lo and hi keep exactly one session with each other, the same one, the canonical
// one (initiated by lo, whose ID sorts first), and that the duplicate is closed (one connection open).
func settled(net *memory.Network, lo, hi *node) error {
	sl, sh := lo.m.Session(hi.ID()), hi.m.Session(lo.ID())
	switch {
	case sl == nil || sh == nil:
		return fmt.Errorf("sessions %v / %v", sl != nil, sh != nil)
	case sl.Status().SessionID != sh.Status().SessionID:
		return fmt.Errorf("the two sides keep different sessions: %s / %s", sl.Status().SessionID, sh.Status().SessionID)
	case sl.Session().Role() != session.Initiator || sh.Session().Role() != session.Responder:
		return fmt.Errorf("kept session initiated by the agent whose ID sorts last (roles %s / %s)", sl.Session().Role(), sh.Session().Role())
	case lo.m.Live() != 1 || hi.m.Live() != 1:
		return fmt.Errorf("running sessions %d / %d, want 1 / 1", lo.m.Live(), hi.m.Live())
	case net.Open() != 2:
		return fmt.Errorf("%d connection ends open, want 2 (the duplicate closed)", net.Open())
	}
	return nil
}

// Two agents dial each other: both keep the session initiated by the agent whose ID sorts first, whichever
// was established first, and the other is closed on both sides.
func TestSimultaneousOpenKeepsTheCanonicalSession(t *testing.T) {
	t.Run("CanonicalLast", func(t *testing.T) {
		net := memory.NewNetwork()
		lo, hi := pair(t, net, nodeOpts{})
		first, err := hi.m.Dial(bg, lo.id.ID(), lo.address()[0])
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, func() string { return "hi's session on lo" }, func() bool { return sessionID(lo, hi) != "" })
		kept, err := lo.m.Dial(bg, hi.id.ID(), hi.address()[0])
		if err != nil {
			t.Fatal(err)
		}
		if kept.Session().Role() != session.Initiator {
			t.Errorf("lo's dial returned the session in role %s, want its own (initiator): it replaces the non-canonical one", kept.Session().Role())
		}
		eventually(t, func() string { return fmt.Sprint(settled(net, lo, hi)) }, func() bool { return settled(net, lo, hi) == nil })
		if first.Session().Err() == nil {
			t.Error("the non-canonical session is still running")
		}
	})
	t.Run("CanonicalFirst", func(t *testing.T) {
		net := memory.NewNetwork()
		lo, hi := pair(t, net, nodeOpts{})
		first, err := lo.m.Dial(bg, hi.id.ID(), hi.address()[0])
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, func() string { return "lo's session on hi" }, func() bool { return sessionID(hi, lo) != "" })
		kept, err := hi.m.Dial(bg, lo.id.ID(), lo.address()[0])
		if err != nil {
			t.Fatal(err)
		}
		if kept.Status().SessionID != first.Status().SessionID {
			t.Errorf("hi's dial returned session %s, want the canonical one it already had (%s)", kept.Status().SessionID, first.Status().SessionID)
		}
		eventually(t, func() string { return fmt.Sprint(settled(net, lo, hi)) }, func() bool { return settled(net, lo, hi) == nil })
	})
	t.Run("AtOnce", func(t *testing.T) {
		net := memory.NewNetwork()
		lo, hi := pair(t, net, nodeOpts{})
		// Both dials wait at the transport until the other has started: both handshakes run at once.
		var mu sync.Mutex
		arrived, both := 0, make(chan struct{})
		net.OnDial(func(ctx context.Context, _, _ string) error {
			mu.Lock()
			arrived++
			if arrived == 2 {
				close(both)
			}
			n := arrived
			mu.Unlock()
			if n > 2 {
				return nil
			}
			select {
			case <-both:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		lo.m.AddTarget(hi.ID(), hi.address(), "bootstrap")
		hi.m.AddTarget(lo.ID(), lo.address(), "bootstrap")
		eventually(t, func() string { return fmt.Sprint(settled(net, lo, hi)) }, func() bool { return settled(net, lo, hi) == nil })
		mu.Lock()
		n := arrived
		mu.Unlock()
		if n < 2 {
			t.Fatalf("%d dials, want both agents to have dialled", n)
		}
	})
}

// Inbound handshakes in progress are bounded: beyond MaxHandshakes a connection is closed at once; a
// slot is freed when its handshake fails (here: the dialler hung up), and then a handshake succeeds.
func TestInboundHandshakesBounded(t *testing.T) {
	net := memory.NewNetwork()
	b := newNode(t, net, nodeOpts{maxHandshakes: 1, handshakeTimeout: time.Minute})
	a := newNode(t, net, nodeOpts{})
	raw := net.Endpoint(a.ID()) // connects as a, then says nothing
	c1, err := raw.Dial(bg, b.addr, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string { return fmt.Sprintf("load %v", b.m.HandshakeLoad()) }, func() bool { return b.m.HandshakeLoad() == 1 })
	c2, err := raw.Dial(bg, b.addr, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()
	if f, err := c2.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("the connection beyond the limit: read %q, %v; want io.EOF (closed at once, before any handshake)", f, err)
	}
	if got := b.m.HandshakeLoad(); got != 1 {
		t.Errorf("handshake load %v, want 1 (the first handshake still holds its slot)", got)
	}
	_ = c1.Close()
	eventually(t, func() string { return fmt.Sprintf("load %v", b.m.HandshakeLoad()) }, func() bool { return b.m.HandshakeLoad() == 0 })
	if _, err := a.m.Dial(bg, b.id.ID(), b.address()[0]); err != nil {
		t.Fatalf("a handshake once the slot is free: %v", err)
	}
	eventually(t, func() string { return "no session on the responder" }, func() bool { return b.m.Session(a.ID()) != nil })
}

// An inbound handshake that does not complete in time is abandoned with reason timeout (the dialler is
// told with an alert frame, then the connection closes) and frees its slot.
func TestInboundHandshakeTimeout(t *testing.T) {
	net := memory.NewNetwork()
	b := newNode(t, net, nodeOpts{maxHandshakes: 1, handshakeTimeout: 300 * time.Millisecond})
	a := newNode(t, net, nodeOpts{})
	c, err := net.Endpoint(a.ID()).Dial(bg, b.addr, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 20*time.Second)
	defer cancel()
	for {
		if _, err := c.ReadFrame(ctx); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("the abandoned connection ended with %v, want io.EOF (closed by the responder)", err)
			}
			break
		}
	}
	eventually(t, func() string { return fmt.Sprintf("load %v", b.m.HandshakeLoad()) }, func() bool { return b.m.HandshakeLoad() == 0 })
	evs := b.events()
	if len(evs) != 1 || evs[0].Kind != "handshake" || reason.Of(evs[0].Err) != reason.Timeout {
		t.Fatalf("events %+v, want one failed handshake with reason %s", evs, reason.Timeout)
	}
	if _, err := a.m.Dial(bg, b.id.ID(), b.address()[0]); err != nil {
		t.Fatalf("a handshake after the timeout: %v", err)
	}
}

// A handshake the responder refuses registers no session on either side; the dialler's error and the
// responder's event carry the refusal's reason (the dialler learns it from the responder's alert); a target keeps retrying and reports it.
func TestRefusedHandshake(t *testing.T) {
	net := memory.NewNetwork()
	a := newNode(t, net, nodeOpts{instantWaits: true})
	b := newNode(t, net, nodeOpts{})
	b.mu.Lock()
	b.refuse = errors.New("not on the guest list")
	b.mu.Unlock()
	_, err := a.m.Dial(bg, b.id.ID(), b.address()[0])
	if reason.Of(err) != reason.PeerAlert || !strings.Contains(fmt.Sprint(err), string(reason.ValidatorRefused)) {
		t.Fatalf("dial refused by the responder: %v (reason %q), want the peer's alert naming %s", err, reason.Of(err), reason.ValidatorRefused)
	}
	eventually(t, func() string { return fmt.Sprintf("events %+v", b.events()) }, func() bool { return len(b.events()) == 1 })
	if ev := b.events()[0]; ev.Kind != "handshake" || reason.Of(ev.Err) != reason.ValidatorRefused || !strings.Contains(ev.Err.Error(), "guest list") {
		t.Errorf("responder event %+v, want the refusal", ev)
	}
	if a.m.Live() != 0 || b.m.Live() != 0 || len(a.m.Statuses()) != 0 || len(b.m.Statuses()) != 0 {
		t.Errorf("sessions after a refusal: %d / %d", a.m.Live(), b.m.Live())
	}
	a.m.AddTarget(b.ID(), b.address(), "connect")
	eventually(t, func() string { return fmt.Sprintf("targets %+v", a.m.TargetStatuses()) }, func() bool {
		ts := a.m.TargetStatuses()[b.ID()]
		return ts.Attempts >= 2 && strings.Contains(ts.LastError, string(reason.ValidatorRefused))
	})
	if a.m.Session(b.ID()) != nil {
		t.Error("a refused target has a session")
	}
}

// A dial names the agent it expects; another agent listening at the address is refused by the transport
// before any handshake, and a dial over a transport that is not configured says which are.
func TestDialRefusals(t *testing.T) {
	net := memory.NewNetwork()
	a, b, c := newNode(t, net, nodeOpts{}), newNode(t, net, nodeOpts{}), newNode(t, net, nodeOpts{})
	_, err := a.m.Dial(bg, c.id.ID(), b.address()[0])
	if err == nil || !strings.Contains(err.Error(), "expected "+c.ID()) {
		t.Fatalf("dial of c at b's address: %v, want the transport's mismatch naming %s", err, c.ID())
	}
	_, err = a.m.Dial(bg, b.id.ID(), sessions.Address{Transport: "carrier-pigeon", Address: "x"})
	if err == nil || !strings.Contains(err.Error(), "carrier-pigeon is not configured") || !strings.Contains(err.Error(), memory.Name) {
		t.Fatalf("dial over an unknown transport: %v", err)
	}
	if len(b.events()) != 0 {
		t.Errorf("b saw a handshake: %+v", b.events())
	}
}

// TestReauthenticateAllBounded: after the local identity changes, every session re-authenticates, but not
// all at once (issue 19): at most Config.ReauthParallel run together, so thousands of sessions do not
// start thousands of handshakes on the same cores (and time out, and re-dial). Each peer's validator, which
// runs inside the re-authentication, holds it for a moment and counts how many are in it at once.
func TestReauthenticateAllBounded(t *testing.T) {
	net := memory.NewNetwork()
	const peers, limit = 12, 3
	hub := newNode(t, net, nodeOpts{reauthParallel: limit})
	var mu sync.Mutex
	inFlight, most, total := 0, 0, 0
	hold := func() {
		mu.Lock()
		inFlight++
		total++
		most = max(most, inFlight)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		inFlight--
		mu.Unlock()
	}
	var ps []*node
	for range peers {
		p := newNode(t, net, nodeOpts{})
		if _, err := hub.m.Dial(bg, p.id.ID(), p.address()[0]); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	for _, p := range ps {
		p.mu.Lock()
		p.validating = hold
		p.mu.Unlock()
	}
	if n := hub.m.ReauthenticateAll(); n != peers {
		t.Fatalf("ReauthenticateAll started %d re-authentications, want %d", n, peers)
	}
	eventually(t, func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("%d of %d re-authenticated", total, peers)
	},
		func() bool { mu.Lock(); defer mu.Unlock(); return total == peers && inFlight == 0 })
	mu.Lock()
	defer mu.Unlock()
	if most > limit {
		t.Fatalf("%d re-authentications ran at once, want at most %d", most, limit)
	}
}
