package session

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/reason"
)

// TestReauthRateLimit: a peer cannot make this side re-handshake in a loop (issue 12 item 8). Requests
// for re-authentication beyond the burst are refused (the session stays up) and reported
// (reauth_refused, reauth_rate_limited) for the audit; re-authentications started by the initiator beyond
// the burst close the session with reauth_rate_limited. The clock stands still: no token comes back.
func TestReauthRateLimit(t *testing.T) {
	t.Run("requests from the responder", func(t *testing.T) {
		clk := agenttest.NewClock(time.Now())
		a, b := newAgent(t, withClock(clk.Now)), newAgent(t, withClock(clk.Now))
		var mu sync.Mutex
		var refused []Event
		a.cfg.OnEvent = func(e Event) {
			if e.Kind == "reauth_refused" {
				mu.Lock()
				refused = append(refused, e)
				mu.Unlock()
			}
		}
		sa, sb := mustConnect(t, a, b)
		const n = DefaultReauthBurst + 4
		for range n {
			if err := sb.writeRecord(bg, recReauthRequest, nil); err != nil {
				t.Fatal(err)
			}
			// One at a time: each honoured request completes before the next (else they coalesce).
			sb.mu.Lock()
			wait := sb.reauthed
			sb.mu.Unlock()
			select {
			case <-wait:
			case <-sa.Done():
				t.Fatalf("the initiator's session ended: %v", sa.Err())
			case <-time.After(200 * time.Millisecond): // refused: nothing comes (a bound, not a timing assertion)
			}
		}
		exchange(t, sa, sb, 2) // the session is still up
		sa.mu.Lock()
		epoch := sa.epoch
		sa.mu.Unlock()
		if epoch > DefaultReauthBurst {
			t.Fatalf("%d requests made the initiator re-authenticate %d times (burst %d)", n, epoch, DefaultReauthBurst)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(refused) == 0 || !errors.Is(refused[0].Err, reason.ReauthRateLimited) || refused[0].Code != reason.ReauthRateLimited {
			t.Fatalf("refusals reported: %+v", refused)
		}
	})
	t.Run("re-authentications started by the initiator", func(t *testing.T) {
		clk := agenttest.NewClock(time.Now())
		a, b := newAgent(t, withClock(clk.Now)), newAgent(t, withClock(clk.Now))
		sa, sb := mustConnect(t, a, b)
		var err error
		for i := 0; i < 3*DefaultReauthBurst && err == nil; i++ {
			err = sa.Reauthenticate(bg)
		}
		if err == nil {
			t.Fatalf("the initiator re-authenticated %d times in a row without refusal", 3*DefaultReauthBurst)
		}
		<-sb.Done()
		expect(t, "responder", sb.Err(), reason.ReauthRateLimited, "")
		expectAlert(t, "initiator", err, reason.ReauthRateLimited)
	})
}
