// Package peers is the agent's cache of what it knows about other agents, in bbolt (<home>/state.db): each
// peer's key event log and its recent delegations, and the mark of peers proven compromised (their logs
// forked). Logs are self-authenticating: they are verified before they are stored and again when they
// are loaded, so a tampered entry is detected rather than trusted. A peer whose log forks is marked
// compromised, with both conflicting events kept as evidence, and stays so. Every write is one bbolt
// transaction, fsynced on commit.
package peers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/wire"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// Bucket names inside state.db (other packages keep their own buckets in the same file).
var (
	bucketLogs        = []byte("peers.kel")
	bucketDelegations = []byte("peers.delegations")
	bucketCompromised = []byte("peers.compromised")
	// bucketUsed: per cached log, 8 bytes of Unix seconds when a handshake last committed it (the
	// eviction order); and under keyTotalBytes the total size of the stored logs.
	bucketUsed    = []byte("peers.kel.used")
	keyTotalBytes = []byte("\x00total_bytes")
)

// MaxDelegations is how many delegations are kept per peer (newest first).
const MaxDelegations = 4

// Defaults of Limits.
const (
	DefaultMaxPeers = 10_000
	DefaultMaxBytes = 256 << 20
	// usedGranularity: a handshake with a peer whose log is unchanged records its use at most this often
	// (a write and an fsync), enough to order evictions.
	usedGranularity = time.Hour
)

// Limits bound the cached key event logs. When a commit would exceed either, the logs (and delegations)
// of the peers least recently committed by a handshake are evicted first. Compromise marks are never
// evicted: they are kept apart and bounded by the peers ever cached (one mark per forked peer).
type Limits struct {
	MaxPeers int   // logs kept (default DefaultMaxPeers)
	MaxBytes int64 // total encoded size of the logs kept (default DefaultMaxBytes)
}

// Cache is the peer cache. Safe for concurrent use.
type Cache struct {
	db    *bbolt.DB
	owned bool
	clock func() time.Time

	mu     sync.Mutex
	states map[string]identity.State // verified states of stored logs
	// loaded: per peer, the stored log last verified by Log and the SHA-256 of its stored bytes. A log
	// whose stored bytes hash the same is the log already verified: Log returns it without verifying its
	// signatures again (a result from a peer used to re-verify its log from inception). Any other bytes,
	// a tampered entry included, are decoded and verified.
	loaded map[string]loadedLog
	limits Limits
}

// SetLimits sets the cache bounds (zero fields: the defaults); they apply from the next commit.
func (c *Cache) SetLimits(l Limits) {
	if l.MaxPeers <= 0 {
		l.MaxPeers = DefaultMaxPeers
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	c.mu.Lock()
	c.limits = l
	c.mu.Unlock()
}

// Open opens (creating it 0600 if needed) the bbolt file at path, for a process that does not share
// the database otherwise; Close closes it.
func Open(path string) (*Cache, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("peer cache: %w", err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("peer cache: open %s: %w (is another agent running on this home?)", path, err)
	}
	c, err := New(db)
	if err != nil {
		db.Close()
		return nil, err
	}
	c.owned = true
	return c, nil
}

// New uses an open bbolt database (shared with other packages); Close does not close it.
func New(db *bbolt.DB) (*Cache, error) {
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketLogs, bucketDelegations, bucketCompromised, bucketUsed} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		// The total is recounted at each open (a file written before it was kept has none).
		var total int64
		if err := tx.Bucket(bucketLogs).ForEach(func(_, v []byte) error { total += int64(len(v)); return nil }); err != nil {
			return err
		}
		return tx.Bucket(bucketUsed).Put(keyTotalBytes, binary.BigEndian.AppendUint64(nil, uint64(total)))
	})
	if err != nil {
		return nil, fmt.Errorf("peer cache: create buckets: %w", err)
	}
	return &Cache{db: db, clock: time.Now, states: map[string]identity.State{}, loaded: map[string]loadedLog{}, limits: Limits{MaxPeers: DefaultMaxPeers, MaxBytes: DefaultMaxBytes}}, nil
}

// SetClock replaces the clock (tests).
func (c *Cache) SetClock(now func() time.Time) { c.clock = now }

// Close closes the database if Open opened it.
func (c *Cache) Close() error {
	if c.owned {
		return c.db.Close()
	}
	return nil
}

// Compromise is the evidence that a peer's key event log forked.
type Compromise struct {
	ID         string
	Generation uint64
	Detected   time.Time
	Cached     identity.Event // the event this agent had
	Presented  identity.Event // the conflicting event it was shown
}

func (p *Compromise) encode() []byte {
	return wire.NewWriter(2048).String(p.ID).Uint64(p.Generation).Int64(p.Detected.Unix()).
		Bytes(p.Cached.Encode()).Bytes(p.Presented.Encode()).Out()
}

func decodeCompromise(b []byte) (*Compromise, error) {
	r := wire.NewReader("compromise record", b)
	p := &Compromise{ID: r.String("id", 128), Generation: r.Uint64("generation"), Detected: time.Unix(r.Int64("detected"), 0)}
	cached, presented := r.Bytes("cached", identity.MaxEventSize), r.Bytes("presented", identity.MaxEventSize)
	if err := r.End(); err != nil {
		return nil, err
	}
	var err error
	if p.Cached, err = identity.DecodeEvent(cached); err != nil {
		return nil, err
	}
	if p.Presented, err = identity.DecodeEvent(presented); err != nil {
		return nil, err
	}
	return p, nil
}

// Compromised returns the evidence if id was marked compromised, or nil.
func (c *Cache) Compromised(id string) (*Compromise, error) {
	var p *Compromise
	err := c.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketCompromised).Get([]byte(id))
		if v == nil {
			return nil
		}
		var err error
		p, err = decodeCompromise(v)
		return err
	})
	if err != nil {
		return nil, reason.Wrap(reason.Internal, err, "peer cache: compromise record of %s is corrupt", id)
	}
	return p, nil
}

func compromisedErr(p *Compromise) error {
	return reason.New(reason.PeerCompromised, "%s is marked compromised: its key event log forked at generation %d (detected %s); refuse it and investigate",
		p.ID, p.Generation, p.Detected.UTC().Format(time.RFC3339))
}

// Log returns the cached, re-verified key event log of id and its state; ok is false when none is cached.
// A peer marked compromised gives peer_compromised.
func (c *Cache) Log(id string) (l identity.Log, st identity.State, ok bool, err error) {
	if p, err := c.Compromised(id); err != nil {
		return l, st, false, err
	} else if p != nil {
		return l, st, false, compromisedErr(p)
	}
	var raw []byte
	if err := c.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketLogs).Get([]byte(id)); v != nil {
			raw = append([]byte(nil), v...)
		}
		return nil
	}); err != nil {
		return l, st, false, reason.Wrap(reason.Internal, err, "peer cache")
	}
	if raw == nil {
		return l, st, false, nil
	}
	sum := sha256.Sum256(raw)
	c.mu.Lock()
	ll, hit := c.loaded[id]
	c.mu.Unlock()
	if hit && ll.sum == sum {
		return identity.Log{Events: slices.Clone(ll.log.Events)}, ll.st, true, nil
	}
	l, st, err = verifyStored(id, raw)
	if err != nil {
		return l, st, false, err
	}
	c.mu.Lock()
	if len(c.loaded) >= c.limits.MaxPeers {
		clear(c.loaded) // bounded like the stored logs; refilled as peers are used
	}
	c.loaded[id] = loadedLog{sum: sum, log: identity.Log{Events: slices.Clone(l.Events)}, st: st}
	c.mu.Unlock()
	return l, st, true, nil
}

// loadedLog is a stored log verified by Log, with the SHA-256 of the bytes it was decoded from.
type loadedLog struct {
	sum [32]byte
	log identity.Log
	st  identity.State
}

func verifyStored(id string, raw []byte) (identity.Log, identity.State, error) {
	l, err := identity.DecodeLog(raw)
	if err != nil {
		return l, identity.State{}, reason.Wrap(reason.KeyLogInvalid, err, "peer cache: the stored key event log of %s is corrupt", id)
	}
	st, err := l.Verify()
	if err != nil {
		return l, st, reason.Wrap(reason.KeyLogInvalid, err, "peer cache: the stored key event log of %s does not verify (tampered state.db?)", id)
	}
	if st.ID.String() != id {
		return l, st, reason.New(reason.KeyLogInvalid, "peer cache: the log stored for %s is of %s (tampered state.db?)", id, st.ID)
	}
	return l, st, nil
}

// Current is the cached verified state of id, an error when none is cached (reputation.Options.Resolve).
func (c *Cache) Current(id identity.ID) (identity.State, error) {
	st, ok, err := c.State(id.String())
	if err != nil {
		return identity.State{}, err
	}
	if !ok {
		return identity.State{}, fmt.Errorf("no key event log cached for %s", id)
	}
	return st, nil
}

// State returns the cached verified state of id (from memory when this process stored or loaded it).
func (c *Cache) State(id string) (identity.State, bool, error) {
	c.mu.Lock()
	st, ok := c.states[id]
	c.mu.Unlock()
	if ok {
		if p, err := c.Compromised(id); err != nil || p != nil {
			if err == nil {
				err = compromisedErr(p)
			}
			return identity.State{}, false, err
		}
		return st, true, nil
	}
	_, st, ok, err := c.Log(id)
	if err != nil || !ok {
		return st, ok, err
	}
	c.mu.Lock()
	c.states[id] = st
	c.mu.Unlock()
	return st, true, nil
}

// UpdateLog merges a key event log presented for id: CheckLog, then CommitLog. For a log from a party
// already authenticated by other means; a handshake checks first and commits only once the peer has
// proven itself (signature, admission), so that an unauthenticated party stores nothing.
func (c *Cache) UpdateLog(id identity.ID, l *identity.Log) (identity.State, error) {
	st, err := c.CheckLog(id, l)
	if err != nil {
		return st, err
	}
	if err := c.CommitLog(id, l); err != nil {
		return identity.State{}, err
	}
	return st, nil
}

// CheckLog verifies a key event log presented for id, in memory, and compares it with the cached one,
// without storing it. It refuses an invalid log (key_log_invalid) and a peer already marked compromised
// (peer_compromised). A log that forks from the cached one is the exception: the fork is proof, by
// signatures only the peer's keys can make, that they are compromised, so the peer is marked compromised
// for good with both conflicting events as evidence (one mark per cached peer) and the result is
// key_log_fork. It returns the newest verified state: the presented log's when it extends the cached one,
// else the cached one's.
func (c *Cache) CheckLog(id identity.ID, l *identity.Log) (identity.State, error) {
	st, err := l.Verify()
	if err != nil {
		return st, reason.Wrap(reason.KeyLogInvalid, err, "the key event log presented for %s", id)
	}
	if !st.ID.Equal(id) {
		return identity.State{}, reason.New(reason.KeyLogInvalid, "the key event log presented for %s is of %s", id, st.ID)
	}
	cached, cst, ok, err := c.Log(id.String())
	if err != nil && reason.Of(err) != reason.KeyLogInvalid {
		return identity.State{}, err
	}
	if err != nil || !ok {
		return st, nil // nothing cached, or a corrupt entry the presented log will replace
	}
	if ferr := identity.CompareForks(&cached, l); ferr != nil {
		p := forkEvidence(id.String(), &cached, l, c.clock())
		err := c.db.Update(func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketCompromised).Put([]byte(id.String()), p.encode())
		})
		c.mu.Lock()
		delete(c.states, id.String())
		c.mu.Unlock()
		if err != nil {
			return identity.State{}, reason.Wrap(reason.Internal, err, "peer cache: mark %s compromised", id)
		}
		return identity.State{}, reason.Wrap(reason.KeyLogFork, ferr, "%s presented a key event log that forks from the cached one at generation %d: marked compromised", id, p.Generation)
	}
	if len(l.Events) > len(cached.Events) {
		return st, nil
	}
	return cst, nil
}

// CommitLog stores a log that CheckLog accepted, once its presenter has authenticated: it replaces the
// cached log when longer (or when the cached entry is corrupt), records the use (for the eviction order),
// and evicts the least recently used peers beyond the Limits. It verifies again and refuses a fork or a
// compromised peer (another handshake may have committed in between).
func (c *Cache) CommitLog(id identity.ID, l *identity.Log) error {
	st, err := l.Verify()
	if err != nil {
		return reason.Wrap(reason.KeyLogInvalid, err, "the key event log presented for %s", id)
	}
	if !st.ID.Equal(id) {
		return reason.New(reason.KeyLogInvalid, "the key event log presented for %s is of %s", id, st.ID)
	}
	c.mu.Lock()
	lim := c.limits
	c.mu.Unlock()
	key := []byte(id.String())
	now := c.clock()
	enc := l.Encode()
	if int64(len(enc)) > lim.MaxBytes {
		return reason.New(reason.KeyLogInvalid, "the key event log of %s (%d bytes) exceeds the peer cache's %d bytes", id, len(enc), lim.MaxBytes)
	}
	// Most handshakes present the very log stored, by a peer used recently: no write transaction (and no
	// fsync) then.
	same := false
	_ = c.db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketCompromised).Get(key) != nil {
			return nil
		}
		last := usedAt(tx.Bucket(bucketUsed).Get(key))
		same = bytes.Equal(tx.Bucket(bucketLogs).Get(key), enc) && now.Sub(last) < usedGranularity && !now.Before(last)
		return nil
	})
	if same {
		c.mu.Lock()
		c.states[id.String()] = st
		c.mu.Unlock()
		return nil
	}
	var result identity.State
	var evicted []string
	var outErr error
	err = c.db.Update(func(tx *bbolt.Tx) error {
		logs, used := tx.Bucket(bucketLogs), tx.Bucket(bucketUsed)
		if v := tx.Bucket(bucketCompromised).Get(key); v != nil {
			p, err := decodeCompromise(v)
			if err != nil {
				return err
			}
			outErr = compromisedErr(p)
			return nil
		}
		result = st
		old := logs.Get(key)
		if old != nil {
			if cached, cst, err := verifyStored(id.String(), old); err == nil {
				if ferr := identity.CompareForks(&cached, l); ferr != nil {
					outErr = reason.Wrap(reason.KeyLogFork, ferr, "%s presented a key event log that forks from the cached one", id)
					return nil
				}
				if len(l.Events) <= len(cached.Events) {
					result = cst
					if last := usedAt(used.Get(key)); now.Sub(last) < usedGranularity && !now.Before(last) {
						return nil // unchanged and used recently: no write
					}
					return used.Put(key, unixBytes(now))
				}
			}
		}
		total := int64(u64(used.Get(keyTotalBytes))) - int64(len(old)) + int64(len(enc))
		if err := logs.Put(key, enc); err != nil {
			return err
		}
		if err := used.Put(key, unixBytes(now)); err != nil {
			return err
		}
		n := 0
		_ = logs.ForEach(func(_, _ []byte) error { n++; return nil })
		for n > lim.MaxPeers || total > lim.MaxBytes {
			victim, size := c.leastRecentlyUsed(tx, key)
			if victim == nil {
				break
			}
			if err := forget(tx, victim); err != nil {
				return err
			}
			total -= size
			n--
			evicted = append(evicted, string(victim))
		}
		return used.Put(keyTotalBytes, binary.BigEndian.AppendUint64(nil, uint64(total)))
	})
	if err != nil {
		return reason.Wrap(reason.Internal, err, "peer cache: update %s", id)
	}
	c.mu.Lock()
	for _, v := range evicted {
		delete(c.states, v)
	}
	if outErr != nil {
		delete(c.states, id.String())
	} else {
		c.states[id.String()] = result
	}
	c.mu.Unlock()
	return outErr
}

// leastRecentlyUsed finds the cached log committed least recently, other than keep (nil when none).
func (c *Cache) leastRecentlyUsed(tx *bbolt.Tx, keep []byte) ([]byte, int64) {
	var victim []byte
	var size int64
	var oldest time.Time
	used := tx.Bucket(bucketUsed)
	_ = tx.Bucket(bucketLogs).ForEach(func(k, v []byte) error {
		if string(k) == string(keep) {
			return nil
		}
		if t := usedAt(used.Get(k)); victim == nil || t.Before(oldest) {
			victim, size, oldest = append([]byte(nil), k...), int64(len(v)), t
		}
		return nil
	})
	return victim, size
}

func unixBytes(t time.Time) []byte { return binary.BigEndian.AppendUint64(nil, uint64(t.Unix())) }

// usedAt decodes a use time; an entry without one (written before uses were kept) is the oldest.
func usedAt(v []byte) time.Time { return time.Unix(int64(u64(v)), 0) }

// u64 decodes 8 bytes big-endian (0 for anything else).
func u64(v []byte) uint64 {
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func forkEvidence(id string, a, b *identity.Log, now time.Time) *Compromise {
	for i := 0; i < min(len(a.Events), len(b.Events)); i++ {
		if a.Events[i].Digest() != b.Events[i].Digest() {
			return &Compromise{ID: id, Generation: a.Events[i].Generation, Detected: now, Cached: a.Events[i], Presented: b.Events[i]}
		}
	}
	return &Compromise{ID: id, Detected: now}
}

// PutDelegation stores a delegation the caller has verified, keeping the MaxDelegations newest (by
// not-after) and dropping expired ones.
func (c *Cache) PutDelegation(d *delegation.Delegation) error {
	now := c.clock().Unix()
	key := []byte(d.AgentID)
	enc := string(d.Encode())
	// Most handshakes present a delegation already stored: skip the write (and its fsync).
	known := false
	_ = c.db.View(func(tx *bbolt.Tx) error {
		list, err := decodeList(tx.Bucket(bucketDelegations).Get(key))
		for _, o := range list {
			known = known || (err == nil && string(o.Encode()) == enc)
		}
		return nil
	})
	if known {
		return nil
	}
	err := c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketDelegations)
		list, _ := decodeList(b.Get(key)) // a corrupt list is replaced
		kept := []*delegation.Delegation{d}
		for _, o := range list {
			if o.NotAfter > now && string(o.Encode()) != enc {
				kept = append(kept, o)
			}
		}
		// newest first by not-after
		for i := 1; i < len(kept); i++ {
			for j := i; j > 0 && kept[j].NotAfter > kept[j-1].NotAfter; j-- {
				kept[j], kept[j-1] = kept[j-1], kept[j]
			}
		}
		if len(kept) > MaxDelegations {
			kept = kept[:MaxDelegations]
		}
		w := wire.NewWriter(1024)
		for _, o := range kept {
			w.Bytes(o.Encode())
		}
		return b.Put(key, w.Out())
	})
	if err != nil {
		return reason.Wrap(reason.Internal, err, "peer cache: store delegation of %s", d.AgentID)
	}
	return nil
}

func decodeList(v []byte) ([]*delegation.Delegation, error) {
	var out []*delegation.Delegation
	r := wire.NewReader("delegation list", v)
	for r.Remaining() > 0 && r.Err() == nil {
		d, err := delegation.Decode(r.Bytes("delegation", delegation.MaxSize))
		if err != nil {
			return out, err
		}
		out = append(out, d)
	}
	return out, r.End()
}

// Delegations returns the stored delegations of id, newest first (unverified: verify before use).
func (c *Cache) Delegations(id string) ([]*delegation.Delegation, error) {
	var out []*delegation.Delegation
	err := c.db.View(func(tx *bbolt.Tx) error {
		var err error
		out, err = decodeList(tx.Bucket(bucketDelegations).Get([]byte(id)))
		return err
	})
	if err != nil {
		return nil, reason.Wrap(reason.Internal, err, "peer cache: delegations of %s are corrupt", id)
	}
	return out, nil
}

// OperationalKeys implements envelope.KeyResolver: the operational keys of sender's stored delegations that
// verify against its cached key event log at time at. An unknown sender gives unknown_peer; a compromised
// one peer_compromised.
func (c *Cache) OperationalKeys(_ context.Context, sender string, at time.Time) ([]keystore.PublicKey, error) {
	st, ok, err := c.State(sender)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, reason.New(reason.UnknownPeer, "no key event log of %s is cached: handshake with it first", sender)
	}
	ds, err := c.Delegations(sender)
	if err != nil {
		return nil, err
	}
	var keys []keystore.PublicKey
	var lastErr error
	for _, d := range ds {
		v, err := delegation.Verify(st.ID, st, d, at)
		if err != nil {
			lastErr = err
			continue
		}
		keys = append(keys, v.OpKey)
	}
	if len(keys) == 0 {
		if lastErr != nil {
			return nil, lastErr
		}
		return nil, reason.New(reason.UnknownPeer, "no delegation of %s is cached: handshake with it first", sender)
	}
	return keys, nil
}

// IDs lists every peer with a cached log.
func (c *Cache) IDs() ([]string, error) {
	var out []string
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketLogs).ForEach(func(k, _ []byte) error {
			out = append(out, string(k))
			return nil
		})
	})
	return out, err
}

// PruneUnseen drops what is cached about peers no handshake committed since cutoff: their key event
// logs, use times and delegations (retention, docs/privacy.md). Compromise marks, with the fork
// evidence they hold, are never dropped, nor the log of a compromised agent. It returns how many peers
// went.
func (c *Cache) PruneUnseen(cutoff time.Time) (int, error) {
	var gone []string
	err := c.db.Update(func(tx *bbolt.Tx) error {
		logs, used, comp := tx.Bucket(bucketLogs), tx.Bucket(bucketUsed), tx.Bucket(bucketCompromised)
		total := int64(u64(used.Get(keyTotalBytes)))
		var victims [][]byte
		err := logs.ForEach(func(k, v []byte) error {
			if comp.Get(k) == nil && usedAt(used.Get(k)).Before(cutoff) {
				victims = append(victims, append([]byte(nil), k...))
				total -= int64(len(v))
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Delegations of peers whose log is gone already (evicted) go too.
		err = tx.Bucket(bucketDelegations).ForEach(func(k, _ []byte) error {
			if (logs.Get(k) == nil || usedAt(used.Get(k)).Before(cutoff)) && comp.Get(k) == nil && !slices.ContainsFunc(victims, func(v []byte) bool { return bytes.Equal(v, k) }) {
				victims = append(victims, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range victims {
			if err := forget(tx, k); err != nil {
				return err
			}
			gone = append(gone, string(k))
		}
		return used.Put(keyTotalBytes, binary.BigEndian.AppendUint64(nil, uint64(max(total, 0))))
	})
	if err != nil {
		return 0, fmt.Errorf("peer cache: prune: %w", err)
	}
	c.mu.Lock()
	for _, id := range gone {
		delete(c.states, id)
	}
	c.mu.Unlock()
	return len(gone), nil
}

// forget deletes a peer's cached key event log, its last-use time and its delegations. The compromise
// mark and its evidence are never deleted: neither eviction nor retention removes them.
func forget(tx *bbolt.Tx, id []byte) error {
	for _, b := range [][]byte{bucketLogs, bucketUsed, bucketDelegations} {
		if err := tx.Bucket(b).Delete(id); err != nil {
			return err
		}
	}
	return nil
}
