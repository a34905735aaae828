// Package policy is resource access control (DESIGN 6, seed "Resource Access Control"): per-role and
// per-peer token-bucket rate limits (default 100 messages/s, burst 200), quotas (concurrent tasks, bytes
// per day), time windows (allowed days and hours in a configured time zone) and geographic allow/deny
// lists (a MaxMind-format country database). Every rule has a log-only mode. Each Decision carries a
// reason code, and the peer's trust level scales its limits (Request.Multiplier, from
// reputation.Effects.RateMultiplier: Restricted peers get a tenth). The clock is injected.
package policy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/reason"
)

// Reason is the stable code of a policy denial (audit records, metric labels, error responses). A Reason
// is an error: errors.Is(err, policy.RateLimited).
type Reason string

// Error makes a Reason usable as an errors.Is target.
func (r Reason) Error() string { return string(r) }

// The reasons.
const (
	RateLimited       = Reason(reason.RateLimited)       // "rate_limited"
	QuotaExceeded     = Reason(reason.QuotaExceeded)     // "quota_exceeded"
	OutsideTimeWindow = Reason(reason.OutsideTimeWindow) // "outside_time_window"
	GeoDenied         = Reason(reason.GeoDenied)         // "geo_denied"
)

// AllReasons lists every reason, for documentation and metrics pre-registration.
var AllReasons = []Reason{RateLimited, QuotaExceeded, OutsideTimeWindow, GeoDenied}

// Request describes who asks.
type Request struct {
	// Peer is the agent ID (or, for a local caller, something like "local:uid=1000").
	Peer string
	// Roles the peer holds now (rbac.Authorizer.Roles).
	Roles []rbac.Role
	// Multiplier scales rate, burst and quotas: reputation.Effects(level).RateMultiplier. Zero or negative
	// means 1 (Blocked peers never get this far: the handshake refuses them).
	Multiplier float64
	// Addr is the remote address (for the geographic rule); the zero Addr skips it (local callers).
	Addr netip.Addr
	// Bytes is the size of the message, counted against the daily quota.
	Bytes int64
}

// Decision is the answer. When Allowed is false, Reason says why. When Allowed is true but WouldDeny is
// true, a rule in log-only mode would have denied (Reason says which): the caller logs and audits it.
type Decision struct {
	Allowed    bool
	WouldDeny  bool
	Reason     Reason
	Detail     string
	RetryAfter time.Duration // for rate_limited: when a token will be there
	Country    string        // the country the address resolved to, when the geo rule ran
}

// Denied is the error form of a denying Decision.
type Denied struct{ Decision }

// Error reads "<reason>: <detail>".
func (d *Denied) Error() string { return string(d.Reason) + ": " + d.Detail }

// Is matches the decision's Reason.
func (d *Denied) Is(target error) bool {
	r, ok := target.(Reason)
	return ok && r == d.Reason
}

// Err is nil when the request is allowed (including log-only would-denials), else a *Denied.
func (d Decision) Err() error {
	if d.Allowed {
		return nil
	}
	return &Denied{d}
}

// Options are the policy's collaborators.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Geo is the country database; required when the config has allow or deny lists.
	Geo *GeoDB
}

type bucket struct {
	tokens float64
	last   time.Time
}

// take refills at rate up to burst and takes n tokens if there are enough. It returns whether it did and,
// if not, how long until there will be.
func (b *bucket) take(now time.Time, rate, burst, n float64) (bool, time.Duration) {
	if b.last.IsZero() {
		b.tokens, b.last = burst, now
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(burst, b.tokens+el*rate)
		b.last = now
	}
	if b.tokens > burst {
		b.tokens = burst // the burst shrank (lower trust)
	}
	if b.tokens >= n-1e-9 { // tolerate floating-point residue of the refill
		b.tokens = math.Max(0, b.tokens-n)
		return true, 0
	}
	wait := time.Duration(math.Ceil((n - b.tokens) / rate * float64(time.Second/time.Microsecond)))
	return false, wait * time.Microsecond
}

// Bucket is the policy's token bucket for other rooms' limits (the HTTP gateway's per-key and
// per-address rates): the same refill arithmetic as the peers' buckets. The zero value starts full on its
// first Take. It is not safe for concurrent use; callers hold their own lock.
type Bucket struct{ b bucket }

// Take refills at rate (tokens per second) up to burst and takes n tokens if there are enough. It returns
// whether it did and, if not, how long until there will be.
func (b *Bucket) Take(now time.Time, rate, burst, n float64) (bool, time.Duration) {
	return b.b.take(now, rate, burst, n)
}

// Idle reports whether the bucket was last touched before t (its owner may forget it: it has refilled).
func (b *Bucket) Idle(t time.Time) bool { return b.b.last.Before(t) }

type peerState struct {
	bucket   bucket
	running  int
	day      string // local date the byte count belongs to
	bytes    int64
	lastSeen time.Time
}

// Policy enforces a Config. It is safe for concurrent use.
type Policy struct {
	now func() time.Time
	geo *GeoDB

	mu     sync.Mutex
	c      *compiled
	peers  map[string]*peerState
	totals map[rbac.Role]*bucket
	// clients are the (peer, on_behalf_of) buckets of AdmitOnBehalfOf, keyed peer NUL client.
	clients map[string]*clientState
}

type clientState struct {
	bucket   bucket
	lastSeen time.Time
}

// New validates cfg and makes a policy.
func New(cfg Config, opts Options) (*Policy, error) {
	p := &Policy{now: opts.Now, geo: opts.Geo, peers: map[string]*peerState{}, totals: map[rbac.Role]*bucket{}, clients: map[string]*clientState{}}
	if p.now == nil {
		p.now = time.Now
	}
	if err := p.Reload(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload replaces the configuration. Counters (tokens, running tasks, bytes today) are kept.
func (p *Policy) Reload(cfg Config) error {
	c, err := compileConfig(cfg)
	if err != nil {
		return err
	}
	if (len(c.allow) > 0 || len(c.deny) > 0 || c.denyUnkn) && p.geo == nil {
		return errors.New("policy.geo has allow or deny rules but no database is open: set policy.geo.database")
	}
	p.mu.Lock()
	p.c = c
	p.mu.Unlock()
	return nil
}

// Connect is the handshake validator's check: the geographic rule and the time window (no counters).
func (p *Policy) Connect(ctx context.Context, req Request) Decision {
	if err := ctx.Err(); err != nil {
		return Decision{Reason: RateLimited, Detail: err.Error()}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	lim := p.limitsLocked(req)
	d := Decision{Allowed: true}
	if p.geoLocked(req, &d) {
		p.windowLocked(now, lim, &d)
	}
	return d
}

// Admit is the message dispatcher's check for every message: geography, time window, the daily byte quota,
// the role totals and the peer's token bucket, in that order. A denied message consumes nothing.
func (p *Policy) Admit(ctx context.Context, req Request) Decision {
	if err := ctx.Err(); err != nil {
		return Decision{Reason: RateLimited, Detail: err.Error()}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	lim := p.limitsLocked(req)
	d := Decision{Allowed: true}
	if !p.geoLocked(req, &d) || !p.windowLocked(now, lim, &d) {
		return d
	}
	st, ok := p.stateLocked(req.Peer, now)
	if !ok {
		return *deny(p.c.cfg.LogOnly.Rate, &d, RateLimited, "too many peers are tracked (%d): refusing new ones until idle ones age out", p.c.cfg.MaxTrackedPeers)
	}
	day := now.In(p.c.loc).Format(time.DateOnly)
	if st.day != day {
		st.day, st.bytes = day, 0
	}
	if lim.bytes >= 0 && st.bytes+req.Bytes > lim.bytes {
		if !deny(p.c.cfg.LogOnly.Quota, &d, QuotaExceeded, "peer %s has sent %d bytes today (%s %s); the daily quota is %d", req.Peer, st.bytes, day, p.c.loc, lim.bytes).Allowed {
			return d
		}
	}
	// Role totals: every configured bucket of the peer's roles must have a token.
	var taken []*bucket
	for _, r := range req.Roles {
		a, ok := p.c.totals[r]
		if !ok {
			continue
		}
		b := p.totals[r]
		if b == nil {
			b = &bucket{}
			p.totals[r] = b
		}
		burst := float64(a.Burst)
		if burst == 0 {
			burst = a.Rate * DefaultBurstFactor
		}
		if ok, wait := b.take(now, a.Rate, math.Max(burst, 1), 1); !ok {
			for _, t := range taken {
				t.tokens++ // give back what this message took
			}
			d.RetryAfter = wait
			if !deny(p.c.cfg.LogOnly.Rate, &d, RateLimited, "all %s peers together exceed %g messages/s", r, a.Rate).Allowed {
				return d
			}
			continue
		}
		taken = append(taken, b)
	}
	if ok, wait := st.bucket.take(now, lim.rate, lim.burst, 1); !ok {
		for _, t := range taken {
			t.tokens++
		}
		d.RetryAfter = wait
		if !deny(p.c.cfg.LogOnly.Rate, &d, RateLimited, "peer %s exceeds %g messages/s (burst %g); retry in %s", req.Peer, lim.rate, lim.burst, wait.Round(time.Millisecond)).Allowed {
			return d
		}
		st.bucket.tokens = 0 // log-only: the message goes through, the bucket stays empty
	}
	st.bytes += req.Bytes
	return d
}

// AdmitOnBehalfOf is the check of a new task request that req.Peer submits on behalf of client (its
// on_behalf_of, ADR 0100): one token of the (peer, client) bucket, whose rate and burst are
// policy.on_behalf_of.share of the peer's. It comes after Admit (the peer's own bucket), so clients
// together never exceed the peer's limits, and one client cannot use up all of them. An empty client
// is always allowed.
func (p *Policy) AdmitOnBehalfOf(ctx context.Context, req Request, client string) Decision {
	if err := ctx.Err(); err != nil {
		return Decision{Reason: RateLimited, Detail: err.Error()}
	}
	d := Decision{Allowed: true}
	if client == "" {
		return d
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	lim := p.limitsLocked(req)
	share := p.c.cfg.OnBehalfOf.Share
	rate, burst := lim.rate*share, math.Max(1, math.Floor(lim.burst*share))
	key := req.Peer + "\x00" + client
	st, ok := p.clients[key]
	if !ok {
		if len(p.clients) >= p.c.cfg.MaxTrackedPeers {
			for k, c := range p.clients { // idle for ten minutes: refilled long ago
				if now.Sub(c.lastSeen) > 10*time.Minute {
					delete(p.clients, k)
				}
			}
			if len(p.clients) >= p.c.cfg.MaxTrackedPeers {
				return *deny(p.c.cfg.LogOnly.Rate, &d, RateLimited, "too many (peer, on_behalf_of) pairs are tracked (%d): refusing new ones until idle ones age out", p.c.cfg.MaxTrackedPeers)
			}
		}
		st = &clientState{}
		p.clients[key] = st
	}
	st.lastSeen = now
	if ok, wait := st.bucket.take(now, rate, burst, 1); !ok {
		d.RetryAfter = wait
		if !deny(p.c.cfg.LogOnly.Rate, &d, RateLimited, "peer %s on behalf of %s exceeds %g task requests/s (burst %g, policy.on_behalf_of.share %g of the peer's); retry in %s",
			req.Peer, client, rate, burst, share, wait.Round(time.Millisecond)).Allowed {
			return d
		}
		st.bucket.tokens = 0
	}
	return d
}

// StartTask reserves one of the peer's concurrent-task slots. On an allowed decision the caller must call
// release exactly once when the task ends (release is idempotent). On a denial release is a no-op.
func (p *Policy) StartTask(ctx context.Context, req Request) (Decision, func()) {
	noop := func() {}
	if err := ctx.Err(); err != nil {
		return Decision{Reason: QuotaExceeded, Detail: err.Error()}, noop
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	lim := p.limitsLocked(req)
	d := Decision{Allowed: true}
	st, ok := p.stateLocked(req.Peer, now)
	if !ok {
		return *deny(p.c.cfg.LogOnly.Quota, &d, QuotaExceeded, "too many peers are tracked (%d)", p.c.cfg.MaxTrackedPeers), noop
	}
	if lim.tasks >= 0 && st.running >= lim.tasks {
		if !deny(p.c.cfg.LogOnly.Quota, &d, QuotaExceeded, "peer %s already runs %d tasks here; the limit is %d", req.Peer, st.running, lim.tasks).Allowed {
			return d, noop
		}
	}
	st.running++
	var once sync.Once
	return d, func() {
		once.Do(func() {
			p.mu.Lock()
			st.running--
			st.lastSeen = p.now()
			p.mu.Unlock()
		})
	}
}

// Usage is a peer's counters now (for the control socket's policy view).
type Usage struct {
	Peer           string
	Tokens         float64
	Rate, Burst    float64
	RunningTasks   int
	MaxTasks       int
	BytesToday     int64
	MaxBytesPerDay int64
}

// Usage returns a peer's counters and effective limits.
func (p *Policy) Usage(req Request) Usage {
	p.mu.Lock()
	defer p.mu.Unlock()
	lim := p.limitsLocked(req)
	u := Usage{Peer: req.Peer, Rate: lim.rate, Burst: lim.burst, MaxTasks: lim.tasks, MaxBytesPerDay: lim.bytes, Tokens: lim.burst}
	if st, ok := p.peers[req.Peer]; ok {
		b := st.bucket
		b.take(p.now(), lim.rate, lim.burst, 0)
		u.Tokens, u.RunningTasks = b.tokens, st.running
		if st.day == p.now().In(p.c.loc).Format(time.DateOnly) {
			u.BytesToday = st.bytes
		}
	}
	return u
}

func (p *Policy) limitsLocked(req Request) limits {
	lim := p.c.resolve(req.Peer, req.Roles)
	m := req.Multiplier
	if m <= 0 || math.IsNaN(m) || math.IsInf(m, 0) {
		m = 1
	}
	if m != 1 {
		lim.rate *= m
		lim.burst = math.Max(1, math.Floor(lim.burst*m))
		if lim.tasks > 0 {
			lim.tasks = max(1, int(float64(lim.tasks)*m))
		}
		if lim.bytes > 0 {
			lim.bytes = max(1, int64(float64(lim.bytes)*m))
		}
	}
	return lim
}

func (p *Policy) geoLocked(req Request, d *Decision) bool {
	c := p.c
	if !req.Addr.IsValid() || (len(c.allow) == 0 && len(c.deny) == 0 && !c.denyUnkn) {
		return true
	}
	cc, err := p.geo.Country(req.Addr)
	if err != nil {
		return deny(c.cfg.LogOnly.Geo, d, GeoDenied, "%v", err).Allowed
	}
	d.Country = cc
	switch {
	case cc == "" && c.denyUnkn:
		return deny(c.cfg.LogOnly.Geo, d, GeoDenied, "address %s is in no country of the geo database, and policy.geo.unknown is deny", req.Addr).Allowed
	case cc == "":
		return true
	case c.deny[cc]:
		return deny(c.cfg.LogOnly.Geo, d, GeoDenied, "address %s is in %s, which policy.geo.deny lists", req.Addr, cc).Allowed
	case len(c.allow) > 0 && !c.allow[cc]:
		return deny(c.cfg.LogOnly.Geo, d, GeoDenied, "address %s is in %s, which is not in policy.geo.allow (%s)", req.Addr, cc, sortedKeys(c.allow)).Allowed
	}
	return true
}

func (p *Policy) windowLocked(now time.Time, lim limits, d *Decision) bool {
	if lim.always {
		return true
	}
	local := now.In(p.c.loc)
	for _, w := range lim.windows {
		if w.contains(local) {
			return true
		}
	}
	return deny(p.c.cfg.LogOnly.TimeWindow, d, OutsideTimeWindow, "%s (%s) is outside the allowed time window", local.Format("Mon 15:04"), p.c.loc).Allowed
}

// stateLocked returns the peer's state, creating it; false when the table is full of live peers.
func (p *Policy) stateLocked(peer string, now time.Time) (*peerState, bool) {
	if st, ok := p.peers[peer]; ok {
		st.lastSeen = now
		return st, true
	}
	if len(p.peers) >= p.c.cfg.MaxTrackedPeers {
		// Forget peers idle for ten minutes with nothing running (their bucket has long refilled).
		for k, st := range p.peers {
			if st.running == 0 && now.Sub(st.lastSeen) > 10*time.Minute {
				delete(p.peers, k)
			}
		}
		if len(p.peers) >= p.c.cfg.MaxTrackedPeers {
			return nil, false
		}
	}
	st := &peerState{lastSeen: now}
	p.peers[peer] = st
	return st, true
}

// deny records a denial in d: in log-only mode the request stays allowed and WouldDeny is set (the first
// would-deny is kept); otherwise Allowed becomes false.
func deny(logOnly bool, d *Decision, r Reason, format string, args ...any) *Decision {
	detail := fmt.Sprintf(format, args...)
	if logOnly {
		if !d.WouldDeny {
			d.WouldDeny, d.Reason, d.Detail = true, r, "log-only: would deny: "+detail
		}
		return d
	}
	d.Allowed, d.WouldDeny, d.Reason, d.Detail = false, false, r, detail
	return d
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
