// Package peers is the agent's cache of what it knows about other agents, in bbolt (<home>/state.db): each
// peer's key event log and its recent delegations, and the mark of peers proven compromised (their logs
// forked). Logs are self-authenticating: they are verified before they are stored and again when they
// are loaded, so a tampered entry is detected rather than trusted. A peer whose log forks is marked
// compromised, with both conflicting events kept as evidence, and stays so. Every write is one bbolt
// transaction, fsynced on commit.
package peers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/identity"
	"github.com/custos-agent/custos/agent/internal/wire"
	"github.com/custos-agent/custos/agent/reason"
	"github.com/custos-agent/custos/keystore"
)

// Bucket names inside state.db (other packages keep their own buckets in the same file).
var (
	bucketLogs        = []byte("peers.kel")
	bucketDelegations = []byte("peers.delegations")
	bucketCompromised = []byte("peers.compromised")
)

// MaxDelegations is how many delegations are kept per peer (newest first).
const MaxDelegations = 4

// Cache is the peer cache. Safe for concurrent use.
type Cache struct {
	db    *bbolt.DB
	owned bool
	clock func() time.Time

	mu     sync.Mutex
	states map[string]identity.State // verified states of stored logs
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
		for _, b := range [][]byte{bucketLogs, bucketDelegations, bucketCompromised} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("peer cache: create buckets: %w", err)
	}
	return &Cache{db: db, clock: time.Now, states: map[string]identity.State{}}, nil
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
	l, st, err = verifyStored(id, raw)
	if err != nil {
		return l, st, false, err
	}
	return l, st, true, nil
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

// UpdateLog merges a key event log presented for id. It verifies the log (key_log_invalid), refuses a
// peer already marked compromised (peer_compromised), and compares it with the cached one: a fork marks
// the peer compromised for good, stores the evidence, and returns key_log_fork; a longer log replaces the
// cached one; a shorter or equal one changes nothing. It returns the newest verified state.
func (c *Cache) UpdateLog(id identity.ID, l *identity.Log) (identity.State, error) {
	st, err := l.Verify()
	if err != nil {
		return st, reason.Wrap(reason.KeyLogInvalid, err, "the key event log presented for %s", id)
	}
	if !st.ID.Equal(id) {
		return identity.State{}, reason.New(reason.KeyLogInvalid, "the key event log presented for %s is of %s", id, st.ID)
	}
	key := []byte(id.String())
	var result identity.State
	var outErr error
	err = c.db.Update(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketCompromised).Get(key); v != nil {
			p, err := decodeCompromise(v)
			if err != nil {
				return err
			}
			outErr = compromisedErr(p)
			return nil
		}
		cachedRaw := tx.Bucket(bucketLogs).Get(key)
		if cachedRaw == nil {
			result = st
			return tx.Bucket(bucketLogs).Put(key, l.Encode())
		}
		cached, cst, err := verifyStored(id.String(), cachedRaw)
		if err != nil {
			// A corrupt cache entry is replaced by the verified log presented now.
			result = st
			return tx.Bucket(bucketLogs).Put(key, l.Encode())
		}
		if ferr := identity.CompareForks(&cached, l); ferr != nil {
			p := forkEvidence(id.String(), &cached, l, c.clock())
			if err := tx.Bucket(bucketCompromised).Put(key, p.encode()); err != nil {
				return err
			}
			outErr = reason.Wrap(reason.KeyLogFork, ferr, "%s presented a key event log that forks from the cached one at generation %d: marked compromised", id, p.Generation)
			return nil
		}
		if len(l.Events) > len(cached.Events) {
			result = st
			return tx.Bucket(bucketLogs).Put(key, l.Encode())
		}
		result = cst
		return nil
	})
	if err != nil {
		return identity.State{}, reason.Wrap(reason.Internal, err, "peer cache: update %s", id)
	}
	c.mu.Lock()
	if outErr != nil {
		delete(c.states, id.String())
	} else {
		c.states[id.String()] = result
	}
	c.mu.Unlock()
	if outErr != nil {
		return identity.State{}, outErr
	}
	return result, nil
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
