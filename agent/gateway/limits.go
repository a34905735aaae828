package gateway

import (
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/policy"
)

// limiter is a set of token buckets (agent/policy's) by name: one per API key, one per client address.
// It forgets buckets idle for idleAfter and holds at most max; when full of live buckets it refuses.
type limiter struct {
	mu      sync.Mutex
	buckets map[string]*policy.Bucket
	max     int
}

const idleAfter = 10 * time.Minute

func newLimiter(max int) *limiter { return &limiter{buckets: map[string]*policy.Bucket{}, max: max} }

// take takes one token from name's bucket (rate per second, burst twice the rate). It returns false and
// the wait when there is none (or when the table is full of live buckets: a second's wait).
func (l *limiter) take(now time.Time, name string, rate float64) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[name]
	if !ok {
		if len(l.buckets) >= l.max {
			for k, v := range l.buckets {
				if v.Idle(now.Add(-idleAfter)) {
					delete(l.buckets, k)
				}
			}
			if len(l.buckets) >= l.max {
				return false, time.Second
			}
		}
		b = &policy.Bucket{}
		l.buckets[name] = b
	}
	return b.Take(now, rate, 2*rate, 1)
}
