package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// TestRetentionShrinksEveryStore: with short periods (privacy.retention, tasks.*), the daemon's retention
// drops what each store holds about peers: an unseen peer's key event log and delegations, an idle
// reputation record, old consensus evidence, an expired grant, an unacknowledged task result, a submitted task's result nobody fetched, old audit segments (the rest
// still verifies from a signed audit.pruned anchor). A compromise mark and an operator's block survive.
// The test reads the bbolt file after the daemon stopped.
func TestRetentionShrinksEveryStore(t *testing.T) {
	ctx := context.Background()
	home, cust := testHome(t)
	cfgPath := filepath.Join(home, "agent.yaml")
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	cfg, digest := writeConfig(t, cfgPath, "metrics: {disabled: true}\n"+
		"authorization: {admins: ["+admin.ID().String()+"]}\n"+
		"privacy: {retention: {interval: 1s, peers_unseen: 1s, reputation: 1s, evidence: 1s, tasks: 1s, audit: 2s}}\n"+
		"audit: {segment_max_age: 1s}\n"+
		"tasks: {unacknowledged_retention: 1s, retry_interval: 200ms}\n")
	d, err := Start(ctx, Options{Home: home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = d.Shutdown(ctx)
		}
	})

	// A peer seen once, a compromised peer, an operator-blocked peer.
	seen := agenttest.NewIdentity(t, keystore.Ed25519)
	if err := d.peers.CommitLog(seen.ID(), &seen.Log); err != nil {
		t.Fatal(err)
	}
	bad := agenttest.NewIdentity(t, keystore.Ed25519)
	bad.Rotate(t)
	fork := bad.Fork(t)
	bad.Rotate(t)
	if _, err := d.peers.UpdateLog(bad.ID(), &bad.Log); err != nil {
		t.Fatal(err)
	}
	if _, err := d.peers.CheckLog(bad.ID(), &fork); !errors.Is(err, reason.KeyLogFork) {
		t.Fatalf("fork: %v", err)
	}
	blocked := agenttest.NewIdentity(t, keystore.Ed25519)
	if err := d.rep.Record(ctx, reputation.Observation{Peer: seen.ID(), Kind: reputation.Completed, ResponseTime: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := d.rep.Block(ctx, blocked.ID()); err != nil {
		t.Fatal(err)
	}
	if err := d.evidence.Put(ctx, consensus.Evidence{Task: "t1", Peer: seen.ID().String(), Kind: "dissent", Digest: "00", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.taskStore.Accept(&tasks.Inbound{TaskID: "t1", Requester: seen.ID().String(), Handler: "echo", Input: []byte("in"),
		State: tasks.InDone, Accepted: time.Now(), Finished: time.Now(), Status: "ok"}); err != nil {
		t.Fatal(err)
	}

	if err := d.taskStore.CreateOutbound(&tasks.Outbound{TaskID: "o1", To: seen.ID().String(), Handler: "echo", Input: []byte("in"),
		State: tasks.OutDone, Submitted: time.Now(), Updated: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// A grant about the peer that expires in two seconds, and one valid for an hour.
	short := grantFor(t, admin, seen.ID(), rbac.TaskSubmitter, time.Now().Add(-time.Hour), time.Hour+2*time.Second)
	long := grantFor(t, admin, blocked.ID(), rbac.TaskSubmitter, time.Now(), time.Hour)
	for _, g := range []rbac.Grant{short, long} {
		if err := d.authz.RBAC().AddGrant(ctx, g); err != nil {
			t.Fatal(err)
		}
	}

	// Wait (the loop runs every second) until every store lost its record; audit records keep the
	// segments rotating.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := d.audit.Append(ctx, audit.Record{Type: audit.ConfigLoaded, Actor: "operator", Subject: "test", Outcome: audit.OutcomeInfo, Details: map[string]any{"digest": "00"}}); err != nil {
			t.Fatal(err)
		}
		logs, _ := d.peers.IDs()
		rep := d.rep.Level(seen.ID()) // New when forgotten
		ev, _ := d.evidence.ByPeer(seen.ID())
		in, _ := d.taskStore.ListInbound()
		out, _ := d.taskStore.ListOutbound()
		rp, _ := audit.Verify(filepath.Join(home, AuditDir), cust.Log())
		gs := d.authz.RBAC().Grants(seen.ID())
		if len(logs) == 1 && rep == reputation.New && len(ev) == 0 && len(in) == 0 && len(out) == 0 && rp.FirstSeq > 1 && len(gs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stores did not shrink: peers %v, evidence %d, inbound %d, outbound %d, grants %d, audit %+v", logs, len(ev), len(in), len(out), len(gs), rp)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	stopped = true

	// The file itself: nothing about the unseen peer; the compromised peer's mark and the block remain.
	db, err := bbolt.Open(filepath.Join(home, StateFile), 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	has := func(bucket, key string) bool {
		found := false
		_ = db.View(func(tx *bbolt.Tx) error {
			b := tx.Bucket([]byte(bucket))
			if b == nil {
				return nil
			}
			return b.ForEach(func(k, _ []byte) error {
				found = found || bytesHasPrefix(k, key)
				return nil
			})
		})
		return found
	}
	s := seen.ID().String()
	if has("rbac/grants", short.ID) || !has("rbac/grants", long.ID) {
		t.Errorf("rbac/grants: the expired grant is kept (%v) or the valid one went (%v)", has("rbac/grants", short.ID), !has("rbac/grants", long.ID))
	}
	for _, b := range []string{"peers.kel", "peers.kel.used", "peers.delegations", "reputation/peers", "consensus/evidence", "tasks.in", "tasks.in.input", "tasks.out", "tasks.out.input"} {
		if has(b, s) {
			t.Errorf("%s still holds the unseen peer", b)
		}
	}
	if !has("peers.compromised", bad.ID().String()) {
		t.Error("the compromise mark was dropped")
	}
	if !has("reputation/peers", blocked.ID().String()) {
		t.Error("the operator's block was dropped")
	}
	rp, err := audit.Verify(filepath.Join(home, AuditDir), cust.Log())
	if err != nil || !rp.Anchored || rp.FirstSeq <= 1 {
		t.Fatalf("audit after retention: %+v, %v", rp, err)
	}
}

func bytesHasPrefix(k []byte, p string) bool { return len(k) >= len(p) && string(k[:len(p)]) == p }
