// Package backoff is the one retry delay policy of the module: exponential from Min, doubling per failed
// attempt, capped at Max, with jitter so that many agents (or many peers of one agent) do not retry in
// lockstep. The transport supervisor's restarts and the session manager's redials both use it.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy bounds the delays. The zero Min means no delay; Max below Min is taken as Min.
type Policy struct {
	Min, Max time.Duration
}

// Step is the delay before retry attempt n (0 for the first retry) without jitter: Min·2^n, at most
// Max. It never overflows, whatever n.
func (p Policy) Step(n int) time.Duration {
	d, limit := p.Min, max(p.Max, p.Min)
	for i := 0; i < n && d < limit; i++ {
		if d > limit/2 {
			d = limit
			break
		}
		d *= 2
	}
	return min(d, limit)
}

// Delay is Step(n) with jitter: uniform in [Step(n)/2, Step(n)], so never more than Max.
func (p Policy) Delay(n int) time.Duration {
	return Jitter(p.Step(n))
}

// Jitter returns a duration uniform in [d/2, d] (0 for d <= 0).
func Jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d-d/2+1)
}
