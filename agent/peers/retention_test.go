package peers

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// TestPruneUnseen (retention, docs/privacy.md): peers not seen since the cutoff lose their cached log,
// use time and delegations; a peer seen since keeps them; a compromised agent keeps its mark, with the fork
// evidence, and its log, however long unseen.
func TestPruneUnseen(t *testing.T) {
	clk := agenttest.NewClock(time.Now())
	c := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer c.Close()
	c.SetClock(clk.Now)
	bad := agenttest.NewIdentity(t, keystore.Ed25519)
	bad.Rotate(t)
	fork := bad.Fork(t)
	bad.Rotate(t)
	if _, err := c.UpdateLog(bad.ID(), &bad.Log); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CheckLog(bad.ID(), &fork); !errors.Is(err, reason.KeyLogFork) {
		t.Fatalf("fork: %v", err)
	}
	old := agenttest.NewIdentity(t, keystore.Ed25519)
	if _, err := c.UpdateLog(old.ID(), &old.Log); err != nil {
		t.Fatal(err)
	}
	clk.Advance(48 * time.Hour)
	recent := agenttest.NewIdentity(t, keystore.Ed25519)
	if _, err := c.UpdateLog(recent.ID(), &recent.Log); err != nil {
		t.Fatal(err)
	}
	n, err := c.PruneUnseen(clk.Now().Add(-24 * time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("PruneUnseen = %d, %v; want 1 (the old peer)", n, err)
	}
	if _, ok, _ := c.State(old.ID().String()); ok {
		t.Fatal("the unseen peer's log is still served")
	}
	ids, err := c.IDs()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{bad.ID().String(): true, recent.ID().String(): true}
	if len(ids) != 2 || !want[ids[0]] || !want[ids[1]] {
		t.Fatalf("cache holds %v, want the recent and the compromised peer", ids)
	}
	p, err := c.Compromised(bad.ID().String())
	if err != nil || p == nil || p.Cached.Digest() == p.Presented.Digest() {
		t.Fatalf("the compromise mark or its evidence is gone: %+v %v", p, err)
	}
	// Everything unseen: only the compromised agent is left.
	clk.Advance(48 * time.Hour)
	if n, err := c.PruneUnseen(clk.Now()); err != nil || n != 1 {
		t.Fatalf("PruneUnseen = %d, %v; want 1", n, err)
	}
	if p, err := c.Compromised(bad.ID().String()); err != nil || p == nil {
		t.Fatalf("the compromise mark is gone: %v", err)
	}
}
