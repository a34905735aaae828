package peers

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

func open(t *testing.T, path string) *Cache {
	t.Helper()
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLogsAndForks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "home", "state.db")
	c := open(t, path)
	peer := agenttest.NewIdentity(t, keystore.Ed25519)
	id := peer.ID().String()
	if _, ok, err := c.State(id); ok || err != nil {
		t.Fatalf("empty cache: %v %v", ok, err)
	}
	old := identity.Log{Events: append([]identity.Event{}, peer.Log.Events...)}
	if _, err := c.UpdateLog(peer.ID(), &old); err != nil {
		t.Fatal(err)
	}
	peer.Rotate(t)
	fork := peer.Fork(t) // another history after generation 1
	st, err := c.UpdateLog(peer.ID(), &peer.Log)
	if err != nil || st.Generation != 1 {
		t.Fatalf("newer log: gen %d, %v", st.Generation, err)
	}
	// An older log changes nothing and returns the newest state.
	if st, err := c.UpdateLog(peer.ID(), &old); err != nil || st.Generation != 1 {
		t.Fatalf("older log: gen %d, %v", st.Generation, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state.db mode: %v %v", fi.Mode(), err)
	}
	// Survives a restart, re-verified from disk.
	c.Close()
	c = open(t, path)
	if st, ok, err := c.State(id); !ok || err != nil || st.Generation != 1 || !st.Current.Equal(peer.Current().Public()) {
		t.Fatalf("after reopen: %+v %v %v", st, ok, err)
	}
	// A fork: both histories are validly signed; together they prove the key holder signed two.
	peer.Rotate(t) // the "real" generation 2
	if _, err := c.UpdateLog(peer.ID(), &peer.Log); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateLog(peer.ID(), &fork); !errors.Is(err, reason.KeyLogFork) || !errors.Is(err, identity.ErrDuplicity) {
		t.Fatalf("fork: %v", err)
	}
	// Compromised stays so, across restarts, whatever log is shown next.
	c.Close()
	c = open(t, path)
	defer c.Close()
	if _, err := c.UpdateLog(peer.ID(), &peer.Log); !errors.Is(err, reason.PeerCompromised) {
		t.Fatalf("update after fork: %v", err)
	}
	if _, _, err := c.State(id); !errors.Is(err, reason.PeerCompromised) {
		t.Fatalf("state after fork: %v", err)
	}
	p, err := c.Compromised(id)
	if err != nil || p == nil || p.Generation != 2 || p.Cached.Digest() == p.Presented.Digest() {
		t.Fatalf("evidence: %+v %v", p, err)
	}
	// Evidence is verifiable by anyone: both events apply to the same state at generation 1.
	prefix := identity.Log{Events: peer.Log.Events[:2]}
	st1, _ := prefix.Verify()
	if _, err := st1.Apply(&p.Cached); err != nil {
		t.Fatal(err)
	}
	if _, err := st1.Apply(&p.Presented); err != nil {
		t.Fatal(err)
	}
}

func TestRefusesBadLogs(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer c.Close()
	a, b := agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.P256)
	if _, err := c.UpdateLog(a.ID(), &b.Log); !errors.Is(err, reason.KeyLogInvalid) {
		t.Fatalf("another agent's log: %v", err)
	}
	bad := identity.Log{Events: append([]identity.Event{}, a.Log.Events...)}
	bad.Events[0].Time++
	if _, err := c.UpdateLog(a.ID(), &bad); !errors.Is(err, reason.KeyLogInvalid) {
		t.Fatalf("altered log: %v", err)
	}
	if ids, _ := c.IDs(); len(ids) != 0 {
		t.Fatalf("a refused log was stored: %v", ids)
	}
	// Tampering with state.db (b's log stored under a's ID) is detected on load.
	if err := c.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketLogs).Put([]byte(a.ID().String()), b.Log.Encode())
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.State(a.ID().String()); !errors.Is(err, reason.KeyLogInvalid) {
		t.Fatalf("tampered entry: %v", err)
	}
}

func TestDelegations(t *testing.T) {
	ctx := context.Background()
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	c := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer c.Close()
	c.SetClock(clock.Now)
	peer := agenttest.NewIdentity(t, keystore.Ed25519)
	id := peer.ID().String()
	if _, err := c.OperationalKeys(ctx, id, clock.Now()); !errors.Is(err, reason.UnknownPeer) {
		t.Fatalf("unknown: %v", err)
	}
	if _, err := c.UpdateLog(peer.ID(), &peer.Log); err != nil {
		t.Fatal(err)
	}
	m, err := delegation.NewManager(ctx, delegation.Config{Identity: peer.Current(), State: peer.State, Clock: clock.Now, KEM: suite.KEMX25519})
	if err != nil {
		t.Fatal(err)
	}
	var issued []*delegation.Keys
	for range 6 {
		k, err := m.Renew(ctx)
		if err != nil {
			t.Fatal(err)
		}
		issued = append(issued, k)
		if err := c.PutDelegation(k.Delegation); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute)
	}
	ds, err := c.Delegations(id)
	if err != nil || len(ds) != MaxDelegations || ds[0].NotAfter != issued[5].Delegation.NotAfter {
		t.Fatalf("kept %d delegations: %v", len(ds), err)
	}
	keys, err := c.OperationalKeys(ctx, id, clock.Now())
	if err != nil || len(keys) != MaxDelegations || !keys[0].Equal(issued[5].Signer().Public()) {
		t.Fatalf("operational keys: %d %v", len(keys), err)
	}
	// After a rotation the stored delegations (signed by the old key) no longer count.
	peer.Rotate(t)
	if _, err := c.UpdateLog(peer.ID(), &peer.Log); err != nil {
		t.Fatal(err)
	}
	if _, err := c.OperationalKeys(ctx, id, clock.Now()); !errors.Is(err, reason.DelegationWrongKey) {
		t.Fatalf("after rotation: %v", err)
	}
}

// TestCacheBounds: the cache keeps at most Limits.MaxPeers logs and Limits.MaxBytes of them, evicting the
// peers least recently committed (their delegations with them), never a compromise mark; CheckLog stores
// nothing (issue 12 item 3, issue 20 finding 5).
func TestCacheBounds(t *testing.T) {
	clk := agenttest.NewClock(time.Now())
	c := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer c.Close()
	c.SetClock(clk.Now)
	// A peer whose fork marked it compromised: the mark outlives every eviction.
	bad := agenttest.NewIdentity(t, keystore.Ed25519)
	bad.Rotate(t)
	fork := bad.Fork(t) // another generation 2
	bad.Rotate(t)
	if _, err := c.UpdateLog(bad.ID(), &bad.Log); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CheckLog(bad.ID(), &fork); !errors.Is(err, reason.KeyLogFork) {
		t.Fatalf("fork: %v", err)
	}
	// CheckLog alone stores nothing.
	stranger := agenttest.NewIdentity(t, keystore.Ed25519)
	if _, err := c.CheckLog(stranger.ID(), &stranger.Log); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := c.State(stranger.ID().String()); ok {
		t.Fatal("CheckLog stored the log")
	}
	c.SetLimits(Limits{MaxPeers: 3})
	var ids []*agenttest.Identity
	for range 6 {
		p := agenttest.NewIdentity(t, keystore.Ed25519)
		ids = append(ids, p)
		clk.Advance(2 * usedGranularity)
		if _, err := c.UpdateLog(p.ID(), &p.Log); err != nil {
			t.Fatal(err)
		}
		if p == ids[0] {
			continue
		}
		// ids[0] keeps being used: it is never the least recently used one.
		if _, err := c.UpdateLog(ids[0].ID(), &ids[0].Log); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.IDs()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{ids[0].ID().String(): true, ids[4].ID().String(): true, ids[5].ID().String(): true}
	if len(got) != 3 {
		t.Fatalf("cache holds %d logs, limit 3: %v", len(got), got)
	}
	for _, g := range got {
		if !want[g] {
			t.Fatalf("cache holds %v, want %v", got, want)
		}
	}
	if _, _, err := c.State(ids[1].ID().String()); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := c.State(ids[1].ID().String()); ok {
		t.Fatal("an evicted peer's state is still served")
	}
	if p, err := c.Compromised(bad.ID().String()); err != nil || p == nil {
		t.Fatalf("the compromise mark was evicted: %v %v", p, err)
	}
	// Bytes: a limit that holds two logs of one event keeps two.
	one := int64(len(ids[5].Log.Encode()))
	c.SetLimits(Limits{MaxPeers: 100, MaxBytes: 2*one + one/2})
	clk.Advance(2 * usedGranularity)
	p := agenttest.NewIdentity(t, keystore.Ed25519)
	if _, err := c.UpdateLog(p.ID(), &p.Log); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.IDs(); len(got) != 2 {
		t.Fatalf("byte limit of two logs: the cache holds %d", len(got))
	}
}

func TestCurrent(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "state.db"))
	peer := agenttest.NewIdentity(t, keystore.Ed25519)
	if _, err := c.Current(peer.ID()); err == nil || err.Error() != "no key event log cached for "+peer.ID().String() {
		t.Fatalf("uncached: %v", err)
	}
	if _, err := c.UpdateLog(peer.ID(), &peer.Log); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Current(peer.ID()); err != nil || !st.Current.Equal(peer.Current().Public()) {
		t.Fatalf("cached: %+v %v", st, err)
	}
}

// TestLoadedLogReverifiedWhenChanged: Log verifies a stored log once and returns it from memory while the
// stored bytes are the same; a tampered entry (another agent's log, or an altered event) is verified, and
// refused, even right after the genuine one was loaded. A caller changing the returned log changes nothing
// cached.
func TestLoadedLogReverifiedWhenChanged(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer c.Close()
	a, b := agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519)
	if _, err := c.UpdateLog(a.ID(), &a.Log); err != nil {
		t.Fatal(err)
	}
	id := a.ID().String()
	for i := 0; i < 2; i++ { // verified, then from memory
		l, st, ok, err := c.Log(id)
		if err != nil || !ok || st.ID.String() != id || len(l.Events) != len(a.Log.Events) {
			t.Fatalf("load %d: %v %v %s %d events", i, ok, err, st.ID, len(l.Events))
		}
		l.Events[0].Time++ // the caller's copy
	}
	if l, _, _, err := c.Log(id); err != nil || l.Events[0].Time != a.Log.Events[0].Time {
		t.Fatalf("a caller's change reached the cached log: %v", err)
	}
	altered := identity.Log{Events: append([]identity.Event{}, a.Log.Events...)}
	altered.Events[0].Time++
	for name, raw := range map[string][]byte{"another agent's log": b.Log.Encode(), "an altered event": altered.Encode()} {
		if err := c.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketLogs).Put([]byte(id), raw) }); err != nil {
			t.Fatal(err)
		}
		if _, _, ok, err := c.Log(id); ok || !errors.Is(err, reason.KeyLogInvalid) {
			t.Fatalf("%s stored after the genuine log was loaded: ok %v, %v; want KeyLogInvalid", name, ok, err)
		}
	}
}
