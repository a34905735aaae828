package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports/host"
)

// Transport is a transport that may run a DHT (*host.Transport): PutRecord and FindRecord answer an
// error wrapping host.ErrNoDiscovery when it does not.
type Transport interface {
	Name() string
	PutRecord(ctx context.Context, key string, value []byte) error
	FindRecord(ctx context.Context, key string, timeout time.Duration) ([]byte, error)
}

// Listener is one of the agent's listeners (*host.Listener): its addresses change when its plugin restarts.
type Listener interface{ Addrs() []string }

// Network is one configured transport with its listeners.
type Network struct {
	T         Transport
	Listeners []Listener
}

// Config is what the discovery service depends on, all explicit.
type Config struct {
	// Self is this agent; OwnLog its key event log now (it changes with rotations).
	Self   identity.ID
	OwnLog func() *identity.Log
	// Keys is the current operational key and its delegation (delegation.Manager.Current).
	Keys func(ctx context.Context) (*delegation.Keys, error)
	// Logs is the peer cache: records of other agents are judged against it (never stored into it).
	Logs Logs
	// Networks lists the transports and their listeners now.
	Networks func() []Network
	// Lifetime of published records (default DefaultLifetime, at most MaxLifetime). Republished at half.
	Lifetime time.Duration
	// CheckInterval is how often listener addresses are compared with the published ones (default 2 s).
	CheckInterval time.Duration
	// Registerer receives the metrics (nil: not registered).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
	// Revocations applies revocations received by gossip (ADR 0091; nil: they are ignored).
	Revocations Revocations
	// Misbehaved is told of an agent whose transport sent invalid gossip, or that broke the catch-up
	// protocol (a reputation observation).
	Misbehaved func(ctx context.Context, id identity.ID)
	// Catchup runs the catch-up of revocations with peers whose session comes up (ADR 0096; nil, or
	// Revocations nil: no catch-up).
	Catchup Catchup
	// Blocks applies administrators' block notices from gossip and catch-up, and has the notices this
	// agent issues published (ADR 0101; nil: they are ignored).
	Blocks Blocks
}

// Service is the agent's discovery: it judges records for its plugins (host.RecordJudge), keeps its own
// record published, and looks agents up.
type Service struct {
	cfg   Config
	m     *serviceMetrics
	peers peerIDs // libp2p peer IDs of verified records
	cu    catchupState

	mu      sync.Mutex
	seq     uint64
	current *Record // last record published (nil before the first)
	changed chan struct{}
}

// New makes the service; Run publishes.
func New(cfg Config) (*Service, error) {
	if cfg.OwnLog == nil || cfg.Keys == nil || cfg.Logs == nil || cfg.Networks == nil || cfg.Self.IsZero() {
		return nil, errors.New("discovery: Self, OwnLog, Keys, Logs and Networks are required")
	}
	if cfg.Lifetime <= 0 || cfg.Lifetime > MaxLifetime {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, m: m, changed: make(chan struct{}, 1)}
	if cfg.Catchup != nil {
		cfg.Catchup.OnCatchup(s.HandleCatchup)
	}
	if cfg.Blocks != nil {
		cfg.Blocks.OnBlockNotice(s.blockHook)
	}
	return s, nil
}

// logs is the verifier's view of key event logs: this agent's own log for its own ID, else the cache.
type logs struct{ s *Service }

func (l logs) CheckLog(id identity.ID, lg *identity.Log) (identity.State, error) {
	if !id.Equal(l.s.cfg.Self) {
		return l.s.cfg.Logs.CheckLog(id, lg)
	}
	own := l.s.cfg.OwnLog()
	if err := identity.CompareForks(own, lg); err != nil {
		return identity.State{}, reason.Wrap(reason.KeyLogFork, err, "a record of this agent carries a key event log that forks from its own")
	}
	return own.Verify()
}

func (l logs) State(id string) (identity.State, bool, error) {
	if id == l.s.cfg.Self.String() {
		st, err := l.s.cfg.OwnLog().Verify()
		return st, err == nil, err
	}
	return l.s.cfg.Logs.State(id)
}

// ValidateRecord implements host.RecordJudge: Verify at now, counted by verdict.
func (s *Service) ValidateRecord(_ context.Context, key string, value []byte) error {
	r, err := Verify(value, key, logs{s}, s.cfg.Now())
	s.m.verdict(err)
	if err == nil {
		if id, perr := identity.ParseID(r.AgentID); perr == nil {
			s.peers.learn(r.PeerID, id)
		}
	}
	if err != nil {
		s.cfg.Logger.Debug("agent record refused", "key", key, "code", reason.Of(err), "err", err)
	}
	return err
}

// SelectRecord implements host.RecordJudge: the best of the valid values.
func (s *Service) SelectRecord(_ context.Context, key string, values [][]byte) (int, error) {
	best, bestI := (*Record)(nil), -1
	now := s.cfg.Now()
	for i, v := range values {
		r, err := Verify(v, key, logs{s}, now)
		if err != nil {
			continue
		}
		if best == nil || Better(r, best) {
			best, bestI = r, i
		}
	}
	if bestI < 0 {
		return 0, reason.New(reason.Malformed, "none of %d records for %s is valid", len(values), key)
	}
	return bestI, nil
}

// AddrsChanged asks the publisher to publish now (e.g. after a plugin restart).
func (s *Service) AddrsChanged() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Current is the last record published (nil before the first).
func (s *Service) Current() *Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// addrs collects the listeners' addresses, sorted, and the libp2p peer ID found in them.
func (s *Service) addrs() ([]Addr, string, []Transport) {
	var out []Addr
	var peerID string
	var dhts []Transport
	for _, n := range s.cfg.Networks() {
		dhts = append(dhts, n.T)
		for _, l := range n.Listeners {
			for _, a := range l.Addrs() {
				out = append(out, Addr{Transport: n.T.Name(), Addr: a})
				if _, id, ok := strings.Cut(a, "/p2p/"); ok && peerID == "" {
					peerID = id
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b Addr) int {
		if c := strings.Compare(a.Transport, b.Transport); c != 0 {
			return c
		}
		return strings.Compare(a.Addr, b.Addr)
	})
	if len(out) > MaxAddrs {
		out = out[:MaxAddrs]
	}
	return out, peerID, dhts
}

// sign makes the next record: addresses now, a sequence above every earlier one (Unix milliseconds),
// an expiry within the lifetime and the delegation's.
func (s *Service) sign(ctx context.Context, addrs []Addr, peerID string) (*Record, error) {
	keys, err := s.cfg.Keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("no operational key to sign the agent record: %w", err)
	}
	lg := s.cfg.OwnLog()
	st, err := lg.Verify()
	if err != nil {
		return nil, fmt.Errorf("own key event log: %w", err)
	}
	now := s.cfg.Now()
	exp := now.Add(s.cfg.Lifetime)
	if na := keys.NotAfter(); na.Before(exp) {
		exp = na
	}
	s.mu.Lock()
	seq := max(uint64(now.UnixMilli()), s.seq+1)
	s.seq = seq
	s.mu.Unlock()
	r := &Record{AgentID: s.cfg.Self.String(), Generation: st.Generation, Head: st.Head, PeerID: peerID, Addrs: addrs,
		Seq: seq, Expires: exp.Unix()}
	if kl := lg.Encode(); len(kl) <= MaxKeyLog {
		r.KeyLog = kl
	}
	if err := Sign(ctx, keys.Signer(), keys.Encoded(), r); err != nil {
		return nil, err
	}
	return r, nil
}

// Publish signs a record with the current addresses and puts it through every transport with a DHT. It
// returns how many took it.
func (s *Service) Publish(ctx context.Context) (int, error) {
	addrs, peerID, ts := s.addrs()
	r, err := s.sign(ctx, addrs, peerID)
	if err != nil {
		s.m.published("error")
		return 0, err
	}
	raw, key := r.Encode(), Key(r.AgentID)
	var errs []error
	n := 0
	for _, t := range ts {
		err := t.PutRecord(ctx, key, raw)
		switch {
		case err == nil:
			n++
		case errors.Is(err, host.ErrNoDiscovery):
		default:
			errs = append(errs, err)
		}
	}
	if n == 0 {
		s.m.published("error")
		if len(errs) == 0 {
			return 0, errors.New("no transport runs a DHT (configure a libp2p transport)")
		}
		return 0, errors.Join(errs...)
	}
	s.m.published("ok")
	s.mu.Lock()
	s.current = r
	s.mu.Unlock()
	return n, nil
}

// Run keeps the agent's record published until ctx ends: at start, whenever the listeners' addresses
// change (checked every CheckInterval, or at once on AddrsChanged) or the agent's key event log does (a
// rotation: its new log is also gossiped, ADR 0097), at half of the record's lifetime, and again after a
// failure with backoff (internal/backoff), for example while no peer is known yet.
func (s *Service) Run(ctx context.Context) {
	fail := 0
	var next time.Time // when to publish even without a change
	var published []Addr
	head := s.ownHead()
	tick := time.NewTicker(s.cfg.CheckInterval)
	defer tick.Stop()
	for {
		addrs, _, _ := s.addrs()
		if h := s.ownHead(); h != head {
			head, next = h, time.Time{}
			s.PublishOwnKeyLog(ctx)
		}
		if next.IsZero() || !s.cfg.Now().Before(next) || !slices.Equal(addrs, published) {
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := s.Publish(pctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				d := backoff.Policy{Min: time.Second, Max: time.Minute}.Delay(fail)
				fail++
				s.cfg.Logger.Info("agent record not published; retrying", "in", d, "err", err)
				next = s.cfg.Now().Add(d)
				published = addrs
			} else {
				fail = 0
				r := s.Current()
				life := time.Unix(r.Expires, 0).Sub(s.cfg.Now())
				next = s.cfg.Now().Add(max(life/2, time.Second))
				published = addrs
				s.cfg.Logger.Debug("agent record published", "seq", r.Seq, "addrs", len(r.Addrs), "republish_in", life/2)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-s.changed:
			next = s.cfg.Now() // publish at once
		}
	}
}

// ownHead is the digest of the last event of this agent's key event log ("" when it does not verify).
func (s *Service) ownHead() string {
	st, err := s.cfg.OwnLog().Verify()
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%d/%x", st.Generation, st.Head)
}

// Find looks id's record up through every transport with a DHT and returns the first that verifies
// (the plugin's answer is verified again here: a plugin's word is never taken).
func (s *Service) Find(ctx context.Context, id identity.ID, timeout time.Duration) (*Record, error) {
	start := s.cfg.Now()
	key := Key(id.String())
	var errs []error
	for _, n := range s.cfg.Networks() {
		raw, err := n.T.FindRecord(ctx, key, timeout)
		if err != nil {
			if errors.Is(err, host.ErrNoDiscovery) {
				continue
			}
			errs = append(errs, err)
			continue
		}
		r, err := Verify(raw, key, logs{s}, s.cfg.Now())
		s.m.verdict(err)
		if err != nil {
			s.m.lookup("invalid", s.cfg.Now().Sub(start))
			errs = append(errs, fmt.Errorf("%s returned a record that does not verify: %w", n.T.Name(), err))
			continue
		}
		s.m.lookup("found", s.cfg.Now().Sub(start))
		s.peers.learn(r.PeerID, id)
		return r, nil
	}
	s.m.lookup("not_found", s.cfg.Now().Sub(start))
	if len(errs) == 0 {
		return nil, errors.New("no transport runs a DHT (configure a libp2p transport)")
	}
	return nil, fmt.Errorf("no valid record of %s found: %w", id, errors.Join(errs...))
}

type serviceMetrics struct {
	verdicts     *prometheus.CounterVec
	publications *prometheus.CounterVec
	lookups      *prometheus.CounterVec
	lookupTime   prometheus.Histogram
	g            gossipMetrics
	c            catchupMetrics
}

func newMetrics(reg prometheus.Registerer) (*serviceMetrics, error) {
	m := &serviceMetrics{
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_discovery_record_verdicts_total",
			Help: "Agent records judged (for the DHT validator of a plugin, or a lookup), by verdict: ok or the failure code.",
		}, []string{"verdict"}),
		publications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_discovery_publications_total",
			Help: "Publications of this agent's record, by result (ok, error).",
		}, []string{"result"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_discovery_lookups_total",
			Help: "DHT lookups of agent records, by result (found, not_found, invalid).",
		}, []string{"result"}),
		lookupTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "custos_discovery_lookup_duration_seconds",
			Help:    "Latency of DHT lookups of agent records, found or not.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}),
		g: newGossipMetrics(),
		c: newCatchupMetrics(),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.verdicts, m.publications, m.lookups, m.lookupTime, m.g.messages, m.g.published, m.c.received, m.c.served} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("discovery metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *serviceMetrics) verdict(err error) {
	v := "ok"
	if err != nil {
		v = string(reason.Of(err))
		if !reason.Registered(v) {
			v = "other"
		}
	}
	m.verdicts.WithLabelValues(v).Inc()
}

func (m *serviceMetrics) published(result string) { m.publications.WithLabelValues(result).Inc() }

func (m *serviceMetrics) lookup(result string, d time.Duration) {
	m.lookups.WithLabelValues(result).Inc()
	m.lookupTime.Observe(d.Seconds())
}

// Resolve looks id up until a verified record is found (retrying with backoff: the agent may not have
// published yet) or ctx ends, then calls connect once with its addresses. Bootstrap entries given by
// agent ID only are resolved this way; connect pins the ID as for any other target.
func (s *Service) Resolve(ctx context.Context, id identity.ID, connect func(addrs []Addr)) {
	for n := 0; ; n++ {
		r, err := s.Find(ctx, id, defaultFindTimeout)
		if err == nil {
			connect(r.Addrs)
			return
		}
		d := backoff.Policy{Min: time.Second, Max: 30 * time.Second}.Delay(n)
		s.cfg.Logger.Info("agent ID not resolved yet; retrying", "id", id.String(), "in", d, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}
