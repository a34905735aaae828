// Package agenttest builds identities, key event logs and clocks for the agent packages' tests.
package agenttest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// Identity is a test agent identity: its signers by generation, the pre-committed next key, its log and
// verified state.
type Identity struct {
	Signers []keystore.Signer // Signers[g] is the key of generation g
	Next    keystore.Signer   // pre-committed next key
	Log     identity.Log
	State   identity.State
	alg     keystore.Algorithm
}

// Epoch is the fixed start time of test logs.
var Epoch = time.Unix(1_700_000_000, 0)

// NewIdentity makes an identity whose keys are in-memory signers of alg.
func NewIdentity(t testing.TB, alg keystore.Algorithm) *Identity {
	t.Helper()
	return FromSigner(t, Mem(t, alg), Mem(t, alg))
}

// FromSigner makes an identity whose inception key is cur (any backend) and whose next key is next.
func FromSigner(t testing.TB, cur, next keystore.Signer) *Identity {
	t.Helper()
	e, err := identity.Incept(context.Background(), cur, next.Public(), keystore.PublicKey{}, Epoch)
	if err != nil {
		t.Fatal(err)
	}
	id := &Identity{Signers: []keystore.Signer{cur}, Next: next, Log: identity.Log{Events: []identity.Event{e}}, alg: next.Public().Algorithm}
	id.verify(t)
	return id
}

// Mem makes an in-memory signer.
func Mem(t testing.TB, alg keystore.Algorithm) keystore.Signer {
	t.Helper()
	s, err := keystore.GenerateMemorySigner(alg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (i *Identity) verify(t testing.TB) {
	t.Helper()
	st, err := i.Log.Verify()
	if err != nil {
		t.Fatal(err)
	}
	i.State = st
}

// ID is the agent ID.
func (i *Identity) ID() identity.ID { return i.State.ID }

// Current is the current signer.
func (i *Identity) Current() keystore.Signer { return i.Signers[len(i.Signers)-1] }

// RotationEvent makes (without applying) a rotation to the pre-committed key that commits nextCommit.
func (i *Identity) RotationEvent(t testing.TB, nextCommit keystore.PublicKey) identity.Event {
	t.Helper()
	e, err := identity.Rotate(context.Background(), i.State, i.Current(), i.Next, nextCommit,
		Epoch.Add(time.Duration(len(i.Log.Events))*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Rotate rotates to the pre-committed key and commits a fresh next key.
func (i *Identity) Rotate(t testing.TB) {
	t.Helper()
	newNext := Mem(t, i.alg)
	e := i.RotationEvent(t, newNext.Public())
	i.Log.Events = append(i.Log.Events, e)
	i.Signers = append(i.Signers, i.Next)
	i.Next = newNext
	i.verify(t)
}

// Fork returns a copy of the log extended by a rotation that differs from the one Rotate would make (it
// commits another next key): the holder of the pre-committed key signing two histories.
func (i *Identity) Fork(t testing.TB) identity.Log {
	t.Helper()
	e := i.RotationEvent(t, Mem(t, i.alg).Public())
	return identity.Log{Events: append(append([]identity.Event{}, i.Log.Events...), e)}
}

// Clock is a settable clock safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock starts a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
