package reputation

import (
	"context"
	"testing"
	"time"
)

// TestNetworkBlockEnds (ADR 0101): a network block refuses the peer until its end, then the peer is
// admitted again without anyone acting (the sweep records the change as expired); an older notice is
// stale; an operator's own block is not shortened by a notice.
func TestNetworkBlockEnds(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, Config{})
	p, q := newPeer(t), newPeer(t)
	now := e.now
	n := Notice{Peer: p.id, Block: true, Issuer: "admin", Issued: now, Until: now.Add(time.Hour), Raw: []byte(`{"n":1}`)}
	if changed, err := e.store.ApplyNotice(ctx, n); err != nil || !changed {
		t.Fatalf("ApplyNotice = %v, %v", changed, err)
	}
	if e.store.Admit(p.id) == nil {
		t.Fatal("a network-blocked peer is admitted")
	}
	if by, until, ok := e.store.BlockOf(p.id); !ok || by != "admin" || !until.Equal(time.Unix(n.Until.Unix(), 0)) {
		t.Fatalf("BlockOf = %q %v %v", by, until, ok)
	}
	if len(e.store.Notices(0)) != 1 {
		t.Fatal("the notice in force is not served")
	}
	older := n
	older.Issued, older.Raw = now.Add(-time.Minute), []byte(`{"n":0}`)
	if _, err := e.store.ApplyNotice(ctx, older); err != ErrStaleNotice {
		t.Fatalf("older notice: %v, want ErrStaleNotice", err)
	}
	e.now = now.Add(time.Hour + time.Second)
	if err := e.store.Admit(p.id); err != nil {
		t.Fatalf("the block ended but the peer is refused: %v", err)
	}
	changes, err := e.store.Sweep(ctx)
	if err != nil || len(changes) != 1 || !changes[0].Expired || changes[0].To != New {
		t.Fatalf("Sweep = %+v, %v; want one expired change to new", changes, err)
	}
	if err := e.store.Block(ctx, q.id); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.ApplyNotice(ctx, Notice{Peer: q.id, Block: true, Issuer: "admin", Issued: e.now, Until: e.now.Add(time.Minute), Raw: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	e.now = e.now.Add(time.Hour)
	if e.store.Admit(q.id) == nil {
		t.Fatal("a notice shortened the operator's own block")
	}
}
