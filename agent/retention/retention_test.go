package retention_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/retention"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/keystore"
)

// TestOnce runs the retention over the real stores in one bbolt file with a test clock: each store loses
// exactly the records older than its period, a period of 0 keeps everything, an operator's block stays.
func TestOnce(t *testing.T) {
	ctx := context.Background()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := agenttest.NewClock(t0)
	pc, err := peers.New(db)
	if err != nil {
		t.Fatal(err)
	}
	pc.SetClock(clk.Now)
	rep, err := reputation.NewStore(ctx, db, reputation.Config{}, reputation.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := consensus.NewEvidenceStore(db)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := tasks.NewStore(db)
	if err != nil {
		t.Fatal(err)
	}
	old, fresh, blocked := agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519)
	put := func(p *agenttest.Identity) {
		t.Helper()
		if err := pc.CommitLog(p.ID(), &p.Log); err != nil {
			t.Fatal(err)
		}
		if err := rep.Record(ctx, reputation.Observation{Peer: p.ID(), Kind: reputation.Completed, ResponseTime: time.Second}); err != nil {
			t.Fatal(err)
		}
		if err := ev.Put(ctx, consensus.Evidence{Task: "t", Peer: p.ID().String(), Kind: "dissent", Digest: "00", Time: clk.Now()}); err != nil {
			t.Fatal(err)
		}
		// A final result nobody fetched, one fetched, one still running.
		for i, st := range []string{tasks.OutDone, tasks.OutDone, tasks.OutRunning} {
			o := &tasks.Outbound{TaskID: fmt.Sprintf("%s-%d", p.ID().String()[8:20], i), To: p.ID().String(), Handler: "echo", Input: []byte("in"),
				State: st, Submitted: clk.Now(), Updated: clk.Now()}
			if i == 1 {
				o.Fetched = clk.Now()
			}
			if err := ts.CreateOutbound(o); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(old)
	if err := rep.Block(ctx, blocked.ID()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(10 * time.Hour)
	put(fresh)
	clk.Advance(time.Hour)

	settings := retention.Settings{Interval: time.Second, PeersUnseen: 5 * time.Hour, Reputation: 5 * time.Hour, Evidence: 0, Tasks: 5 * time.Hour}
	cfg := retention.Config{Settings: func() retention.Settings { return settings }, Peers: pc, Reputation: rep, Evidence: ev, Tasks: ts, Now: clk.Now}
	got, err := retention.Once(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got[retention.StorePeers] != 1 || got[retention.StoreReputation] != 1 || got[retention.StoreEvidence] != 0 || got[retention.StoreTasks] != 1 {
		t.Fatalf("removed %v, want one peer, one reputation record (the old peer's, not the blocked one), no evidence (period 0), one task (the old unfetched result)", got)
	}
	if outs, _ := ts.ListOutbound(); len(outs) != 5 {
		t.Fatalf("%d outbound tasks left, want 5 (the old fetched and running ones, the fresh three)", len(outs))
	}
	if ids, _ := pc.IDs(); len(ids) != 1 || ids[0] != fresh.ID().String() {
		t.Fatalf("peers left %v, want only the fresh one", ids)
	}
	if rep.Level(blocked.ID()) != reputation.Blocked {
		t.Fatal("the operator's block was dropped")
	}
	if n := ev.Count(); n != 2 {
		t.Fatalf("evidence kept %d, want 2 with period 0", n)
	}
	settings.Evidence = 5 * time.Hour
	if got, err := retention.Once(ctx, cfg); err != nil || got[retention.StoreEvidence] != 1 {
		t.Fatalf("evidence removed %v (%v), want 1", got, err)
	}
	if e, _ := ev.ByPeer(fresh.ID()); len(e) != 1 {
		t.Fatalf("the fresh evidence went: %v", e)
	}
	// A failing store does not stop the others; its error is returned.
	cfg.Peers = failing{}
	settings.Reputation = time.Minute
	got, err = retention.Once(ctx, cfg)
	if err == nil || got[retention.StoreReputation] != 1 {
		t.Fatalf("with a failing peer store: removed %v, err %v", got, err)
	}
}

type failing struct{}

func (failing) PruneUnseen(time.Time) (int, error) { return 0, errors.New("disk on fire") }
