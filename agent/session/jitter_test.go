package session

import (
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/handshake"
)

// TestReauthSpread: sessions established at the same moment do not re-authenticate at the same moment
// (issue 19). An agent that restarts, or a network that heals, re-establishes every session within
// seconds; without jitter all of them would re-handshake together at every interval, a burst of
// thousands of handshakes. Each session's re-authentication is drawn at random in the last fifth of its
// delay (never later than the rules of sessionTimes allow, never earlier than four fifths of it).
func TestReauthSpread(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	cases := []struct {
		name  string
		cfg   Config
		est   handshake.Established
		delay time.Duration // what sessionTimes allowed before jitter
	}{
		// Defaults: expiry at interval + grace (16 min), re-authentication at three quarters of it.
		{"defaults", Config{ReauthInterval: DefaultReauthInterval, ReauthGrace: DefaultReauthGrace},
			handshake.Established{Reauth: uint64(DefaultReauthInterval / time.Second), Expires: now.Add(time.Hour).Unix()}, 12 * time.Minute},
		// The peer's interval is shorter.
		{"peer's interval", Config{ReauthInterval: time.Hour, ReauthGrace: time.Minute},
			handshake.Established{Reauth: 600, Expires: now.Add(2 * time.Hour).Unix()}, 10 * time.Minute},
	}
	far := now.Add(24 * time.Hour)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			const n = 2000
			lo, hi := c.delay, time.Duration(0)
			for range n {
				exp, at := sessionTimes(&c.cfg, &c.est, far, far, now)
				d := at.Sub(now)
				if d > c.delay || d < c.delay*4/5 {
					t.Fatalf("re-authentication after %s: want within [%s, %s]", d, c.delay*4/5, c.delay)
				}
				if !at.Before(exp) {
					t.Fatalf("re-authentication at %s, not before the expiry %s", at, exp)
				}
				lo, hi = min(lo, d), max(hi, d)
			}
			// 2000 uniform draws over a fifth of the delay: the spread is nearly the whole fifth.
			if spread := hi - lo; spread < c.delay/10 {
				t.Fatalf("%d sessions established at one moment re-authenticate within %s of each other (delays %s to %s): want a spread of at least %s",
					n, spread, lo, hi, c.delay/10)
			}
		})
	}
}
