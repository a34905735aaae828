package reputation

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/signature"
	bolt "go.etcd.io/bbolt"
)

// Bucket names inside the agent's state.db.
var (
	bucketPeers    = []byte("reputation/peers")
	bucketFeedback = []byte("reputation/feedback")
)

// Weights are the relative weights of the quality factors. A factor with no evidence yet is left out (the
// others are renormalised). The error rate is not a weight: it multiplies (see Score).
type Weights struct {
	Completion   float64
	ResponseTime float64
	Contribution float64
	Feedback     float64
}

// Config tunes the model. The zero value of every field means its default.
type Config struct {
	// HalfLife of all evidence: an observation counts half as much after one half-life. Default 7 days.
	HalfLife time.Duration
	// Weights of the quality factors. Default completion 0.4, response time 0.2, contribution 0.1,
	// feedback 0.3.
	Weights Weights
	// ErrorPenalty is how many good results one wrong result or protocol error cancels. Default 5.
	ErrorPenalty float64
	// TargetResponse is the response time that scores 1; slower scores target/actual. Default 2 s.
	TargetResponse time.Duration
	// ContributionScale is the contribution (in the caller's units, e.g. CPU-seconds) at which the
	// contribution factor reaches 82%. Default 100.
	ContributionScale float64
	Thresholds        Thresholds
	MinEvidence       MinEvidence
	// Effects of each level; nil means DefaultEffects.
	Effects map[Level]Effects
	// MaxPeers bounds the peers remembered; beyond it the New peer with the least evidence is forgotten
	// (Restricted and Blocked peers are never forgotten). Default 100000.
	MaxPeers int
	// FeedbackPerHour bounds the feedback counted from one giver per hour (beyond it feedback is refused).
	// Default 20.
	FeedbackPerHour int
}

func (c *Config) fill() error {
	if c.HalfLife == 0 {
		c.HalfLife = 7 * 24 * time.Hour
	}
	if c.Weights == (Weights{}) {
		c.Weights = Weights{Completion: 0.4, ResponseTime: 0.2, Contribution: 0.1, Feedback: 0.3}
	}
	if c.ErrorPenalty == 0 {
		c.ErrorPenalty = 5
	}
	if c.TargetResponse == 0 {
		c.TargetResponse = 2 * time.Second
	}
	if c.ContributionScale == 0 {
		c.ContributionScale = 100
	}
	if c.Thresholds == (Thresholds{}) {
		c.Thresholds = DefaultThresholds()
	}
	if c.MinEvidence == (MinEvidence{}) {
		c.MinEvidence = DefaultMinEvidence()
	}
	if c.Effects == nil {
		c.Effects = DefaultEffects()
	}
	if c.MaxPeers == 0 {
		c.MaxPeers = 100000
	}
	if c.FeedbackPerHour == 0 {
		c.FeedbackPerHour = 20
	}
	w := c.Weights
	switch {
	case c.HalfLife < time.Minute:
		return fmt.Errorf("reputation half-life %s is too short: give at least 1m", c.HalfLife)
	case w.Completion < 0 || w.ResponseTime < 0 || w.Contribution < 0 || w.Feedback < 0 || w.Completion+w.ResponseTime+w.Contribution+w.Feedback == 0:
		return fmt.Errorf("reputation weights must be non-negative and not all zero, got %+v", w)
	case c.ErrorPenalty < 1:
		return fmt.Errorf("error penalty %g: give at least 1", c.ErrorPenalty)
	case c.TargetResponse <= 0 || c.ContributionScale <= 0 || c.MaxPeers < 1:
		return errors.New("target response, contribution scale and max peers must be positive")
	}
	for _, l := range AllLevels {
		if _, ok := c.Effects[l]; !ok {
			return fmt.Errorf("reputation effects: level %s is missing", l)
		}
	}
	return c.Thresholds.validate()
}

// Kind is what was observed about a peer.
type Kind int

// The observations.
const (
	// Completed: the peer delivered a result for a task (ResponseTime set).
	Completed Kind = iota + 1
	// Failed: the peer accepted a task and did not deliver (timeout, crash, error response).
	Failed
	// Agreed: the peer's result matched the accepted result of a vote.
	Agreed
	// Dissented: the peer's result differed from the accepted result of a vote (a wrong result).
	Dissented
	// ProtocolError: the peer sent something invalid (bad signature, replay, malformed message, flood).
	ProtocolError
	// Contributed: the peer contributed resources (Units, e.g. CPU-seconds or MiB stored).
	Contributed
)

// Observation is one thing learned about a peer.
type Observation struct {
	Peer         identity.ID
	Kind         Kind
	ResponseTime time.Duration // Completed
	Units        float64       // Contributed
}

// record is what is stored per peer. Every counter decays from Updated.
type record struct {
	Peer      string `json:"peer"`
	Level     Level  `json:"level"`
	Since     int64  `json:"since"`   // Unix nanoseconds the level was entered
	Updated   int64  `json:"updated"` // Unix nanoseconds of the last decay
	FirstSeen int64  `json:"first_seen"`
	Manual    bool   `json:"manual,omitempty"` // blocked by an operator
	// A network block (ADR 0101): Until > 0 ends it (Unix seconds), BlockedBy is the administrator.
	// Notice is the newest administrator notice held about the peer (block or unblock, JSON), issued at
	// NoticeIssued, relevant until NoticeUntil (served to peers in catch-up).
	Until        int64   `json:"until,omitempty"`
	BlockedBy    string  `json:"blocked_by,omitempty"`
	Notice       string  `json:"notice,omitempty"`
	NoticeIssued int64   `json:"notice_issued,omitempty"`
	NoticeUntil  int64   `json:"notice_until,omitempty"`
	lifted       bool    // get ended an expired network block (commit reports it)
	Completed    float64 `json:"completed"`
	Failed       float64 `json:"failed"`
	Good         float64 `json:"good"`
	Bad          float64 `json:"bad"`
	RTSum        float64 `json:"rt_sum"` // seconds
	RTCount      float64 `json:"rt_count"`
	Contrib      float64 `json:"contrib"`
	FbPos        float64 `json:"fb_pos"`
	FbNeg        float64 `json:"fb_neg"`
}

func (r *record) decay(now int64, halfLife time.Duration) {
	if now <= r.Updated {
		return
	}
	f := math.Exp2(-float64(now-r.Updated) / float64(halfLife))
	for _, p := range []*float64{&r.Completed, &r.Failed, &r.Good, &r.Bad, &r.RTSum, &r.RTCount, &r.Contrib, &r.FbPos, &r.FbNeg} {
		*p *= f
	}
	r.Updated = now
}

func (r *record) evidence() float64 {
	return r.Completed + r.Failed + r.Good + r.Bad + r.FbPos + r.FbNeg
}

// Change is a level transition, reported to Options.OnChange (for the audit log and metrics).
type Change struct {
	Peer     identity.ID
	From, To Level
	Score    float64
	Manual   bool // Block or Unblock by an operator (or an administrator's notice, ADR 0101)
	Expired  bool // a network block that reached its end
	At       time.Time
}

// Options are the store's collaborators.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Resolve returns what this agent knows of a feedback giver's key event log; nil means
	// identity.SignedAtOnly (generation 0: the ID's key).
	Resolve func(identity.ID) (identity.State, error)
	// CheckTask confirms that the giver had the feedback's task with the subject (in the agent: the task
	// reference is the subject's signed result for that task, addressed to the giver). nil refuses all
	// feedback.
	CheckTask func(ctx context.Context, f *Feedback) error
	// OnChange is called (outside the store's lock) after each level change was persisted.
	OnChange func(Change)
	// Logger; nil discards.
	Logger *slog.Logger
}

// Store is the reputation of every peer, in memory and in bbolt. It is safe for concurrent use.
type Store struct {
	cfg      Config
	db       *bolt.DB
	ownsDB   bool
	now      func() time.Time
	resolve  func(identity.ID) (identity.State, error)
	check    func(context.Context, *Feedback) error
	onChange func(Change)
	log      *slog.Logger

	mu     sync.Mutex
	peers  map[string]*record
	givers map[string]*giverRate // feedback counted per giver in the current hour
}

// giverRate counts one giver's feedback in one hour.
type giverRate struct {
	hour int64
	n    int
}

// Open opens (creating it 0600 if needed) the bbolt file at path and the store in it. Use NewStore instead when
// the agent already holds the state.db handle (bbolt allows one handle per file per process).
func Open(ctx context.Context, path string, cfg Config, opts Options) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open reputation store %s: %w", path, err)
	}
	s, err := NewStore(ctx, db, cfg, opts)
	if err != nil {
		db.Close()
		return nil, err
	}
	s.ownsDB = true
	return s, nil
}

// NewStore makes the store inside an open bbolt database (buckets "reputation/peers" and
// "reputation/feedback") and loads every peer. A stored record that does not decode is an error naming it.
func NewStore(ctx context.Context, db *bolt.DB, cfg Config, opts Options) (*Store, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, db: db, now: opts.Now, resolve: opts.Resolve, check: opts.CheckTask, onChange: opts.OnChange, log: opts.Logger,
		peers: map[string]*record{}, givers: map[string]*giverRate{}}
	if s.now == nil {
		s.now = time.Now
	}
	if s.resolve == nil {
		s.resolve = func(id identity.ID) (identity.State, error) { return identity.SignedAtOnly(id), nil }
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPeers, bucketFeedback} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketPeers).ForEach(func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil || r.Peer != string(k) {
				return fmt.Errorf("stored reputation of %q is corrupt (%v): restore state.db from a backup or delete the record", k, err)
			}
			if _, err := ParseLevel(string(r.Level)); err != nil {
				return fmt.Errorf("stored reputation of %q: %v", k, err)
			}
			s.peers[r.Peer] = &r
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("reputation store: %w", err)
	}
	return s, nil
}

// Close closes the database if Open opened it.
func (s *Store) Close() error {
	if s.ownsDB {
		return s.db.Close()
	}
	return nil
}

// Effects returns what level l implies.
func (s *Store) Effects(l Level) Effects { return s.cfg.Effects[l] }

// Record applies observations (about one or many peers) in one fsynced transaction, then re-evaluates each
// touched peer's level. Level changes are reported to Options.OnChange.
func (s *Store) Record(ctx context.Context, obs ...Observation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, o := range obs {
		if o.Peer.IsZero() || o.Kind < Completed || o.Kind > Contributed {
			return fmt.Errorf("observation %+v: needs a peer and a known kind", o)
		}
		if o.ResponseTime < 0 || o.Units < 0 || math.IsNaN(o.Units) || math.IsInf(o.Units, 0) {
			return fmt.Errorf("observation of %s: response time and units must be finite and non-negative", o.Peer)
		}
	}
	now := s.now().UnixNano()
	s.mu.Lock()
	touched := map[string]*record{}
	for _, o := range obs {
		key := o.Peer.String()
		r := touched[key]
		if r == nil {
			r = s.get(key, now)
			touched[key] = r
		}
		switch o.Kind {
		case Completed:
			r.Completed++
			r.RTSum += o.ResponseTime.Seconds()
			r.RTCount++
		case Failed:
			r.Failed++
		case Agreed:
			r.Good++
		case Dissented, ProtocolError:
			r.Bad++
		case Contributed:
			r.Contrib += o.Units
		}
	}
	changes, err := s.commit(touched, now, nil)
	s.mu.Unlock()
	s.report(changes)
	return err
}

// get returns a copy of the peer's record, decayed to now (a fresh New record for an unknown peer).
func (s *Store) get(key string, now int64) *record {
	if r, ok := s.peers[key]; ok {
		c := *r
		c.decay(now, s.cfg.HalfLife)
		if c.blockEnded(now) { // a network block is not for good (ADR 0101)
			c.Level, c.Since, c.Manual, c.Until, c.BlockedBy, c.lifted = New, now, false, 0, "", true
		}
		return &c
	}
	return &record{Peer: key, Level: New, Since: now, Updated: now, FirstSeen: now}
}

// commit re-evaluates levels, persists the records in one transaction, and only then installs them in
// memory (so a failed write leaves memory as it was). Called with s.mu held.
func (s *Store) commit(touched map[string]*record, now int64, extra func(*bolt.Tx) error) ([]Change, error) {
	var changes []Change
	for _, r := range touched {
		if r.lifted {
			id, _ := identity.ParseID(r.Peer)
			changes = append(changes, Change{Peer: id, From: Blocked, To: New, Score: s.score(r), Manual: true, Expired: true, At: time.Unix(0, now)})
			r.lifted = false
		}
		score := s.score(r)
		next := s.cfg.Thresholds.next(r.Level, score, r.evidence(), s.cfg.MinEvidence)
		if next != r.Level {
			id, _ := identity.ParseID(r.Peer)
			changes = append(changes, Change{Peer: id, From: r.Level, To: next, Score: score, At: time.Unix(0, now)})
			r.Level, r.Since = next, now
		}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if extra != nil {
			if err := extra(tx); err != nil {
				return err
			}
		}
		b := tx.Bucket(bucketPeers)
		for k, r := range touched {
			v, err := json.Marshal(r)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reputation store: write: %w", err)
	}
	for k, r := range touched {
		s.peers[k] = r
	}
	s.evictLocked()
	return changes, nil
}

// evictLocked forgets New peers with the least evidence while there are more than MaxPeers. Eviction is
// memory-only plus a best-effort delete; Restricted and Blocked peers are never forgotten.
func (s *Store) evictLocked() {
	over := len(s.peers) - s.cfg.MaxPeers
	if over <= 0 {
		return
	}
	var cands []*record
	for _, r := range s.peers {
		if r.Level == New {
			cands = append(cands, r)
		}
	}
	slices.SortFunc(cands, func(a, b *record) int {
		if c := cmp.Compare(a.evidence(), b.evidence()); c != 0 {
			return c
		}
		return cmp.Compare(a.Updated, b.Updated)
	})
	if over > len(cands) {
		over = len(cands)
	}
	gone := cands[:over]
	_ = s.db.Update(func(tx *bolt.Tx) error {
		for _, r := range gone {
			_ = tx.Bucket(bucketPeers).Delete([]byte(r.Peer))
		}
		return nil
	})
	for _, r := range gone {
		delete(s.peers, r.Peer)
	}
}

func (s *Store) report(changes []Change) {
	for _, c := range changes {
		s.log.Info("trust level changed", "peer", c.Peer.String(), "from", c.From, "to", c.To, "score", c.Score, "manual", c.Manual)
		if s.onChange != nil {
			s.onChange(c)
		}
	}
}

// ErrBlocked is returned by Admit for a Blocked peer.
var ErrBlocked = errors.New("peer is blocked")

// Admit is the handshake validator's check: nil, or an error wrapping ErrBlocked for a peer whose level
// refuses the handshake.
func (s *Store) Admit(peer identity.ID) error {
	l := s.Level(peer)
	if s.cfg.Effects[l].RefuseHandshake {
		return fmt.Errorf("%w: %s is at trust level %s", ErrBlocked, peer, l)
	}
	return nil
}

// Level returns the peer's current level (New for an unknown peer).
func (s *Store) Level(peer identity.ID) Level {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.peers[peer.String()]; ok {
		if r.blockEnded(s.now().UnixNano()) {
			return New
		}
		return r.Level
	}
	return New
}

// Weight is the peer's vote weight in reputation-weighted consensus: score × the level's VoteMultiplier.
func (s *Store) Weight(peer identity.ID) float64 {
	rep := s.Report(peer)
	return rep.Score * s.cfg.Effects[rep.Level].VoteMultiplier
}

// Block puts a peer at Blocked by an operator's decision (it stays there until Unblock).
func (s *Store) Block(ctx context.Context, peer identity.ID) error {
	return s.setManual(ctx, peer, Blocked)
}

// Unblock gives a blocked peer a fresh start: level New, all evidence forgotten.
func (s *Store) Unblock(ctx context.Context, peer identity.ID) error {
	return s.setManual(ctx, peer, New)
}

func (s *Store) setManual(ctx context.Context, peer identity.ID, to Level) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.now().UnixNano()
	s.mu.Lock()
	r := s.get(peer.String(), now)
	from := r.Level
	if to == New {
		if from != Blocked {
			s.mu.Unlock()
			return fmt.Errorf("peer %s is not blocked (it is %s)", peer, from)
		}
		*r = record{Peer: r.Peer, FirstSeen: r.FirstSeen, Updated: now}
	}
	r.Level, r.Since, r.Manual = to, now, to == Blocked
	r.Until, r.BlockedBy = 0, "" // an operator's own block is for good, until Unblock
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketPeers).Put([]byte(r.Peer), v)
	})
	if err == nil {
		s.peers[r.Peer] = r
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("reputation store: write: %w", err)
	}
	if from != to {
		s.report([]Change{{Peer: peer, From: from, To: to, Score: s.score(r), Manual: true, At: time.Unix(0, now)}})
	}
	return nil
}

// Sweep re-evaluates every peer's level against its decayed score (for the daemon to call, say, hourly:
// decay alone can move a Restricted peer back to New). It returns the changes.
func (s *Store) Sweep(ctx context.Context) ([]Change, error) {
	now := s.now().UnixNano()
	s.mu.Lock()
	touched := map[string]*record{}
	for k := range s.peers {
		r := s.get(k, now)
		if r.lifted || s.cfg.Thresholds.next(r.Level, s.score(r), r.evidence(), s.cfg.MinEvidence) != r.Level {
			touched[k] = r
		}
	}
	horizon := now - int64(s.feedbackHorizon())
	changes, err := s.commit(touched, now, func(tx *bolt.Tx) error {
		// Forget feedback keys older than the horizon: feedback that old is refused anyway.
		c := tx.Bucket(bucketFeedback).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) < horizon {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	s.mu.Unlock()
	s.report(changes)
	return changes, err
}

// ErrFeedbackRefused marks feedback that verified but is not counted: a duplicate, or too old or too far in
// the future.
var ErrFeedbackRefused = errors.New("feedback refused")

// AddFeedback verifies signed feedback (form, giver's signature under signature.Feedback) and counts it for
// the subject, weighted by the giver's own vote weight (score × level multiplier: a Restricted or Blocked
// giver counts zero, a New one little). One giver counts once per (subject, task). It returns the weight
// given. The message dispatcher calls it for every "feedback" message it accepted.
func (s *Store) AddFeedback(ctx context.Context, f Feedback) (float64, error) {
	if err := f.check(); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	giver, _ := identity.ParseID(f.Giver)
	st, err := s.resolve(giver)
	if err != nil {
		return 0, fmt.Errorf("feedback from %s: the giver's key event log is unavailable: %w", f.Giver, err)
	}
	sig, err := identity.Base64().DecodeString(f.Sig)
	if err != nil {
		return 0, fmt.Errorf("%w: signature is not unpadded base64url", ErrMalformed)
	}
	if _, err := st.VerifySignedAt(identity.NoGeneration, "", f.Time, func(pub keystore.PublicKey) error {
		return signature.VerifyInput(pub, f.SigningInput(), sig)
	}); err != nil {
		return 0, fmt.Errorf("feedback from %s: %w", f.Giver, err)
	}
	nowT := s.now()
	if t := time.Unix(f.Time, 0); t.Before(nowT.Add(-s.feedbackHorizon())) || t.After(nowT.Add(5*time.Minute)) {
		return 0, fmt.Errorf("%w: feedback time %s is outside [now - %s, now + 5m]", ErrFeedbackRefused, t.UTC().Format(time.RFC3339), s.feedbackHorizon())
	}
	if s.check == nil {
		return 0, fmt.Errorf("%w: this agent has no way to confirm feedback tasks", ErrFeedbackRefused)
	}
	if err := s.check(ctx, &f); err != nil {
		return 0, fmt.Errorf("%w: %s's feedback about %s for task %q: the task is not confirmed: %v", ErrFeedbackRefused, f.Giver, f.Subject, f.Task, err)
	}
	return s.addFeedback(f, s.Weight(giver), nowT, true)
}

// AddOwnFeedback counts feedback this agent gave itself (agentctl feedback) for its subject, with full
// weight: its own opinion of a peer it had a task with. Like AddFeedback, one feedback counts once per
// (subject, task); the caller signed f and checked that the task was this agent's with the subject.
func (s *Store) AddOwnFeedback(ctx context.Context, f Feedback) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	_, err := s.addFeedback(f, 1, s.now(), false)
	return err
}

// addFeedback counts f with weight w unless it was counted before (and, with limit, within the giver's
// hourly allowance).
func (s *Store) addFeedback(f Feedback, w float64, nowT time.Time, limit bool) (float64, error) {
	subject, _ := identity.ParseID(f.Subject)
	now := nowT.UnixNano()
	key := f.key()
	s.mu.Lock()
	dup := false
	_ = s.db.View(func(tx *bolt.Tx) error {
		dup = tx.Bucket(bucketFeedback).Get(key) != nil
		return nil
	})
	if dup {
		s.mu.Unlock()
		return 0, fmt.Errorf("%w: %s already gave feedback about %s for task %q", ErrFeedbackRefused, f.Giver, f.Subject, f.Task)
	}
	if limit {
		if err := s.takeGiverSlot(f.Giver, nowT); err != nil {
			s.mu.Unlock()
			return 0, err
		}
	}
	r := s.get(subject.String(), now)
	rating := float64(f.Rating) / MaxRating
	r.FbPos += w * (1 + rating) / 2
	r.FbNeg += w * (1 - rating) / 2
	changes, err := s.commit(map[string]*record{r.Peer: r}, now, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFeedback).Put(key, binary.BigEndian.AppendUint64(nil, uint64(now)))
	})
	s.mu.Unlock()
	s.report(changes)
	return w, err
}

// takeGiverSlot counts one feedback of giver in the current hour, or refuses it beyond FeedbackPerHour.
// s.mu is held.
func (s *Store) takeGiverSlot(giver string, now time.Time) error {
	hour := now.Unix() / 3600
	r := s.givers[giver]
	if r == nil || r.hour != hour {
		if len(s.givers) >= s.cfg.MaxPeers {
			for k, v := range s.givers {
				if v.hour != hour {
					delete(s.givers, k)
				}
			}
		}
		r = &giverRate{hour: hour}
		s.givers[giver] = r
	}
	if r.n >= s.cfg.FeedbackPerHour {
		return fmt.Errorf("%w: %s already gave %d feedback this hour (the limit)", ErrFeedbackRefused, giver, r.n)
	}
	r.n++
	return nil
}

// feedbackHorizon is how old feedback may be: four half-lives (it would count for 1/16 by then).
func (s *Store) feedbackHorizon() time.Duration { return 4 * s.cfg.HalfLife }

// PruneIdle drops the records of peers nothing was recorded about since cutoff (retention,
// docs/privacy.md): after that long their decayed score says next to nothing. A peer an operator blocked
// (Block) is kept: that is the operator's decision, undone only by Unblock. It returns how many went.
func (s *Store) PruneIdle(ctx context.Context, cutoff time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c := cutoff.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for k, r := range s.peers {
		if !r.Manual && r.Updated < c {
			gone = append(gone, k)
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, k := range gone {
			if err := tx.Bucket(bucketPeers).Delete([]byte(k)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("reputation store: prune: %w", err)
	}
	for _, k := range gone {
		delete(s.peers, k)
	}
	return len(gone), nil
}

// Subject returns the stored reputation of peer (nil when none is stored): the subject-access copy of
// ADR 0092. Feedback keys are one-way digests of (giver, subject, task): they name no agent and are not
// returned; they age out after the feedback horizon.
func (s *Store) Subject(peer identity.ID) *Report {
	s.mu.Lock()
	_, ok := s.peers[peer.String()]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	r := s.Report(peer)
	return &r
}

// EraseSubject deletes peer's reputation record (erasure on request, ADR 0092). An operator's block is
// kept (kept true): it is a security decision, undone by Unblock. It returns how many records went.
func (s *Store) EraseSubject(ctx context.Context, peer identity.ID) (removed int, kept bool, err error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	k := peer.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.peers[k]
	if !ok {
		return 0, false, nil
	}
	if r.Manual {
		return 0, true, nil
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPeers).Delete([]byte(k)) }); err != nil {
		return 0, false, fmt.Errorf("reputation store: erase: %w", err)
	}
	delete(s.peers, k)
	return 1, false, nil
}
