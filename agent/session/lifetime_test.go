package session

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/handshake"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/reason"
)

// times reads the session's expiry and re-authentication time.
func (s *Session) times() (expires, reauthAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expires, s.reauthAt
}

// localBound is the latest a session may expire by the local agent's own rules: its re-authentication
// interval plus grace, the hard maximum, the peer's delegation and its own delegation.
func localBound(c *Config, s *Session, now time.Time) time.Time {
	b := now.Add(min(c.ReauthInterval+c.ReauthGrace, MaxSessionLifetime))
	if na := s.Peer().Delegation.NotAfter; na.Before(b) {
		b = na
	}
	s.wmu.Lock()
	na := s.keys.NotAfter()
	s.wmu.Unlock()
	if na.Before(b) {
		b = na
	}
	return b
}

// TestSessionLifetimeBounds: the initiator bounds what the responder's "established" says (issue 12 item
// 1). A responder with a stolen operational key sending a 50-year expiry does not keep the session past the
// initiator's own interval plus grace; a re-authentication interval that overflows a time.Duration neither
// wraps into a storm of re-authentications nor disables them; the initiator's own shorter interval counts.
func TestSessionLifetimeBounds(t *testing.T) {
	const fiftyYears = 50 * 365 * 24 * time.Hour
	cases := []struct {
		name     string
		interval time.Duration // the initiator's own ReauthInterval (0: default)
		change   func(e *handshake.Established, now time.Time)
	}{
		{"50-year expiry and interval", 0, func(e *handshake.Established, now time.Time) {
			e.Expires, e.Reauth = now.Add(fiftyYears).Unix(), uint64(fiftyYears/time.Second)
		}},
		{"interval of 2^64-1 s (wraps to -1 s)", 0, func(e *handshake.Established, now time.Time) { e.Reauth = math.MaxUint64 }},
		{"interval of 18446744074 s (wraps to 0.29 s)", 0, func(e *handshake.Established, now time.Time) { e.Reauth = 18446744074 }},
		{"expiry at the largest value the decoder takes", 0, func(e *handshake.Established, now time.Time) { e.Expires = math.MaxInt64 / 2 }},
		{"initiator's own shorter interval", 2 * time.Minute, func(*handshake.Established, time.Time) {}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clk := agenttest.NewClock(time.Now())
			a, b := newAgent(t, withClock(clk.Now)), newAgent(t, withClock(clk.Now))
			a.cfg.ReauthInterval = c.interval
			a.cfg.noAutoReauth = true
			b.cfg.testEstablished = func(e *handshake.Established) { c.change(e, clk.Now()) }
			sa, sb := mustConnect(t, a, b)
			now := clk.Now()
			ac := mustCheck(t, a.cfg)
			exp, reauthAt := sa.times()
			if bound := localBound(ac, sa, now); exp.After(bound) {
				t.Fatalf("the initiator keeps the session until %s, past its own bound %s", exp.UTC(), bound.UTC())
			}
			if lo := now.Add(ac.ReauthInterval / 2); reauthAt.Before(lo) || reauthAt.After(now.Add(ac.ReauthInterval)) || reauthAt.After(exp) {
				t.Fatalf("re-authentication at %s: want within [%s, %s] and not after the expiry %s",
					reauthAt.UTC(), lo.UTC(), now.Add(ac.ReauthInterval).UTC(), exp.UTC())
			}
			// Three hours later the initiator has closed the session on its own: the responder's messages
			// are no longer accepted.
			clk.Advance(3 * time.Hour)
			sa.wake()
			select {
			case <-sa.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the initiator still runs the session three hours later")
			}
			if !errors.Is(sa.Err(), reason.SessionExpired) {
				t.Fatalf("initiator: %v, want session_expired", sa.Err())
			}
			if _, err := sb.Send(bg, envelope.TaskRequest, []byte("late")); err == nil {
				if m, err := sa.Receive(context.Background()); err == nil {
					t.Fatalf("the initiator accepted %q after its session expired", m.Payload)
				}
			}
		})
	}
}

// TestFrameAfterExpiryRefused: a frame that arrives after the session's expiry is refused at once
// (session_expired), even before the maintenance goroutine wakes up to close the session.
func TestFrameAfterExpiryRefused(t *testing.T) {
	clk := agenttest.NewClock(time.Now())
	a, b := newAgent(t, withClock(clk.Now)), newAgent(t, withClock(clk.Now))
	a.cfg.testNoMaintain, b.cfg.testNoMaintain = true, true // only the receive path can notice the expiry
	sa, sb := mustConnect(t, a, b)
	clk.Advance(3 * time.Hour)
	if _, err := sb.sendEnvelope(bg, envelope.NewHeader(sb.LocalID(), sa.LocalID(), envelope.TaskRequest, clk.Now()), []byte("late")); err != nil {
		t.Fatal(err)
	}
	m, err := sa.Receive(bg)
	if err == nil {
		t.Fatalf("the initiator accepted %q three hours after its session expired", m.Payload)
	}
	expect(t, "initiator", err, reason.SessionExpired, "not re-authenticated")
}
