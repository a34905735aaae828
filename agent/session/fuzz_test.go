package session

import (
	"math"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/handshake"
	"github.com/custos-agent/custos/agent/internal/agenttest"
)

// FuzzEstablishedBounds: whatever a responder puts in its "established" messages (the first handshake's
// and a re-authentication's: expires, reauth) and whatever the initiator's own interval and grace are, the
// initiator's session never expires after its local bound (its interval plus grace, the hard maximum, both
// delegations' not_after) and never waits for re-authentication longer than its own interval. It runs the
// real handshake and re-authentication over a pipe (issue 12 item 1).
func FuzzEstablishedBounds(f *testing.F) {
	now := time.Now().Unix()
	f.Add(now+50*365*86400, uint64(50*365*86400), uint32(0), uint32(0), now+1e9, uint64(math.MaxUint64))
	f.Add(now+60, uint64(18446744074), uint32(900), uint32(60), now-10, uint64(0))
	f.Add(int64(math.MaxInt64/2), uint64(math.MaxUint64), uint32(1), uint32(1), int64(math.MinInt64/2), uint64(1))
	f.Add(now, uint64(1), uint32(math.MaxUint32), uint32(math.MaxUint32), now+3600, uint64(3600))
	clk := agenttest.NewClock(time.Now())
	a, b := newAgent(f, withClock(clk.Now)), newAgent(f, withClock(clk.Now))
	var mu sync.Mutex
	var sent []*handshake.Established // what the responder sends, in order: the handshake's, the re-authentication's
	a.cfg.noAutoReauth = true
	f.Fuzz(func(t *testing.T, exp1 int64, reauth1 uint64, intervalS, graceS uint32, exp2 int64, reauth2 uint64) {
		a.cfg.ReauthInterval = max(time.Duration(intervalS%(1<<31))*time.Second, time.Second)
		a.cfg.ReauthGrace = time.Duration(graceS%(1<<31)) * time.Second
		mu.Lock()
		sent = []*handshake.Established{{Expires: exp1, Reauth: reauth1}, {Expires: exp2, Reauth: reauth2}}
		mu.Unlock()
		b.cfg.testEstablished = func(e *handshake.Established) {
			mu.Lock()
			defer mu.Unlock()
			if len(sent) > 0 {
				e.Expires, e.Reauth = sent[0].Expires, sent[0].Reauth
				sent = sent[1:]
			}
		}
		ca, cb := pipePair()
		rc := make(chan *Session, 1)
		go func() {
			s, _ := Accept(bg, cb, b.cfg)
			rc <- s
		}()
		sa, err := Initiate(bg, ca, a.cfg, b.ID())
		sb := <-rc
		defer func() {
			if sa != nil {
				sa.Close()
			}
			if sb != nil {
				sb.Close()
			}
		}()
		if err != nil {
			return // e.g. an expires the decoder refuses: no session, nothing to bound
		}
		ac := mustCheck(t, a.cfg)
		check := func(what string, at time.Time) {
			exp, reauthAt := sa.times()
			if bound := localBound(ac, sa, at); exp.After(bound) {
				t.Fatalf("%s: the session expires at %s, after the local bound %s", what, exp.UTC(), bound.UTC())
			}
			if limit := at.Add(min(ac.ReauthInterval, MaxSessionLifetime)); reauthAt.After(limit) {
				t.Fatalf("%s: re-authentication at %s, after the local interval allows (%s)", what, reauthAt.UTC(), limit.UTC())
			}
		}
		check("handshake", clk.Now())
		if exp, _ := sa.times(); !clk.Now().Before(exp) {
			return // already expired: no re-authentication can run
		}
		if err := sa.Reauthenticate(bg); err != nil {
			return
		}
		check("re-authentication", clk.Now())
	})
}
