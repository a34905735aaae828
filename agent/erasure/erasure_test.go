package erasure_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/erasure"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/audit/subjectkeys"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/sealbox"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

type world struct {
	deps erasure.Deps
	self *agenttest.Identity
	az   *rbac.Authorizer
	dir  string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx := context.Background()
	tmp := t.TempDir()
	db, err := bolt.Open(filepath.Join(tmp, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	self := agenttest.NewIdentity(t, keystore.Ed25519)
	pc, err := peers.New(db)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := reputation.NewStore(ctx, db, reputation.Config{}, reputation.Options{})
	if err != nil {
		t.Fatal(err)
	}
	gs, err := rbac.NewBoltStore(db)
	if err != nil {
		t.Fatal(err)
	}
	az, err := rbac.NewAuthorizer(ctx, rbac.Config{Admins: []identity.ID{self.ID()}}, rbac.Options{Store: gs})
	if err != nil {
		t.Fatal(err)
	}
	held, err := rbac.NewHeldGrants(db)
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
	box, err := sealbox.New(sealbox.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := subjectkeys.New(db, box)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "audit")
	lg, err := audit.Open(ctx, dir, audit.Options{Signer: self.Current(), AgentID: self.ID().String(), SubjectKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.Close() })
	return &world{self: self, az: az, dir: dir, deps: erasure.Deps{Self: self.ID(), Peers: pc, Reputation: rep, Grants: az, Held: held,
		Evidence: ev, Tasks: ts, Audit: lg, AuditDir: dir, AuditKeys: keys}}
}

// talk fills every store with something about p, and writes an audit record naming it.
func (w *world) talk(t *testing.T, p *agenttest.Identity) {
	t.Helper()
	ctx := context.Background()
	d := w.deps
	id := p.ID().String()
	if err := d.Peers.(*peers.Cache).CommitLog(p.ID(), &p.Log); err != nil {
		t.Fatal(err)
	}
	if err := d.Reputation.(*reputation.Store).Record(ctx, reputation.Observation{Peer: p.ID(), Kind: reputation.Completed, ResponseTime: time.Second}); err != nil {
		t.Fatal(err)
	}
	g, err := rbac.IssueGrant(ctx, w.self.Current(), w.self.ID(), p.ID(), rbac.TaskSubmitter, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.az.AddGrant(ctx, g); err != nil {
		t.Fatal(err)
	}
	if err := d.Evidence.(*consensus.EvidenceStore).Put(ctx, consensus.Evidence{Task: "t-" + id[:12], Peer: id, Kind: "dissent", Digest: "00", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	st := d.Tasks.(*tasks.Store)
	if _, _, err := st.Accept(&tasks.Inbound{TaskID: "in-" + id[8:20], Requester: id, Handler: "echo", Input: []byte("input of " + id), State: tasks.InAccepted, Accepted: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateOutbound(&tasks.Outbound{TaskID: "out-" + id[8:20], To: id, Handler: "echo", Input: []byte("to " + id), State: tasks.OutPending, Submitted: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Audit.Append(ctx, audit.Record{Type: audit.AuthSuccess, Actor: id, Subject: w.self.ID().String(), Outcome: audit.OutcomeSuccess,
		Details: map[string]any{"remote": remoteOf(p), "transport": "tcp"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Audit.Append(ctx, audit.Record{Type: audit.AccessDenied, Actor: id, Subject: "task.submit", Outcome: audit.OutcomeDenied,
		Details: map[string]any{"reason": "no_role", "error": "peer " + id + " has no role"}}); err != nil {
		t.Fatal(err)
	}
}

// remoteOf is a documentation address unique to p.
func remoteOf(p *agenttest.Identity) string {
	return fmt.Sprintf("198.51.100.%d:7400", 1+int(p.ID().String()[10])%200)
}

// TestEraseSubject: before Erase, Export holds the subject's audit records opened; after it, Export
// holds and keeps nothing, the raw audit segments name neither the subject nor its address, the
// subject's audit key is destroyed (its records read as erased), another agent's data is untouched, and
// the data.erased record (naming the key's reference, not the subject) carries the counts and verifies.
func TestEraseSubject(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	x, y := agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519)
	w.talk(t, x)
	w.talk(t, y)
	before, err := w.deps.Export(ctx, x.ID())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []string{erasure.StorePeers, erasure.StoreReputation, erasure.StoreGrants, erasure.StoreEvidence, erasure.StoreTasks, erasure.StoreAudit} {
		if len(before.Held[st]) == 0 {
			t.Errorf("export before: nothing in %s", st)
		}
	}
	if !strings.Contains(string(before.Held[erasure.StoreAudit]), remoteOf(x)) || len(before.Kept) != 0 {
		t.Errorf("export before: audit %s, kept %+v", before.Held[erasure.StoreAudit], before.Kept)
	}
	res, err := w.deps.Erase(ctx, "uid:0", x.ID())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{erasure.StorePeers: 2, erasure.StoreReputation: 1, erasure.StoreGrants: 1, erasure.StoreEvidence: 1, erasure.StoreTasks: 2, erasure.StoreAuditKeys: 1}
	for st, n := range want {
		if res.Removed[st] != n {
			t.Errorf("removed from %s: %d, want %d (%v)", st, res.Removed[st], n, res.Removed)
		}
	}
	after, err := w.deps.Export(ctx, x.ID())
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Held) != 0 {
		t.Fatalf("export after the erasure holds %v", after.Held)
	}
	if len(after.Kept) != 0 || res.Shredded != 2 || res.SubjectRef == "" {
		t.Fatalf("kept %+v, shredded %d (want 2), ref %q", after.Kept, res.Shredded, res.SubjectRef)
	}
	var raw strings.Builder
	segs, _ := filepath.Glob(filepath.Join(w.dir, "*.jsonl"))
	for _, p := range segs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		raw.Write(b)
	}
	if raw.Len() == 0 || strings.Contains(raw.String(), x.ID().String()) || strings.Contains(raw.String(), remoteOf(x)) {
		t.Fatalf("the raw audit log (%d bytes) still names x or its address", raw.Len())
	}
	opened := 0
	if err := audit.Query(ctx, w.dir, audit.Filter{Keys: w.deps.AuditKeys, Types: []string{"auth.*", "access.*"}}, func(e audit.Entry) error {
		if e.Actor == audit.Erased {
			opened++
		} else if e.Actor != y.ID().String() {
			t.Errorf("record %d: actor %q", e.Seq, e.Actor)
		}
		return nil
	}); err != nil || opened != 2 {
		t.Fatalf("%d records read as erased, want 2: %v", opened, err)
	}
	other, err := w.deps.Export(ctx, y.ID())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []string{erasure.StorePeers, erasure.StoreReputation, erasure.StoreGrants, erasure.StoreEvidence, erasure.StoreTasks} {
		if string(other.Held[st]) == "" {
			t.Errorf("the other agent lost %s", st)
		}
	}
	// The audit record: counts, the subject, checkpoint-covered, the log verifies.
	var rec *audit.Entry
	if err := audit.Query(ctx, w.dir, audit.Filter{Types: []string{string(audit.DataErased)}}, func(e audit.Entry) error { rec = &e; return nil }); err != nil {
		t.Fatal(err)
	}
	if rec == nil || rec.Subject != res.SubjectRef || rec.Actor != "uid:0" || rec.Seq != res.AuditSeq || rec.Details["subject_key"] != "destroyed" {
		t.Fatalf("data.erased %+v", rec)
	}
	b, _ := json.Marshal(rec.Details["removed"])
	var got map[string]int
	if err := json.Unmarshal(b, &got); err != nil || len(got) != len(want) || got[erasure.StoreTasks] != 2 {
		t.Fatalf("data.erased removed %s", b)
	}
	covered := rec.Seq
	if err := w.deps.Audit.(*audit.Log).Close(); err != nil {
		t.Fatal(err)
	}
	rp, err := audit.Verify(w.dir, w.self.Log)
	if err != nil || rp.CoveredSeq < covered {
		t.Fatalf("verify: %+v %v", rp, err)
	}
}

// TestEraseKeepsSecurityEvidence: a compromised subject's mark and an operator's block stay, and both
// export and erase say so with the reason.
func TestEraseKeepsSecurityEvidence(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	bad := agenttest.NewIdentity(t, keystore.Ed25519)
	bad.Rotate(t)
	fork := bad.Fork(t)
	bad.Rotate(t)
	pc := w.deps.Peers.(*peers.Cache)
	if _, err := pc.UpdateLog(bad.ID(), &bad.Log); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.CheckLog(bad.ID(), &fork); !errors.Is(err, reason.KeyLogFork) {
		t.Fatalf("fork: %v", err)
	}
	if err := w.deps.Reputation.(*reputation.Store).Block(ctx, bad.ID()); err != nil {
		t.Fatal(err)
	}
	res, err := w.deps.Erase(ctx, "uid:0", bad.ID())
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]string{}
	for _, k := range res.Kept {
		kept[k.Store] = k.Reason
	}
	if kept[erasure.StoreCompromise] != erasure.WhyCompromise || kept[erasure.StoreReputation] != erasure.WhyBlock {
		t.Fatalf("kept %+v", res.Kept)
	}
	if c, err := pc.Compromised(bad.ID().String()); err != nil || c == nil {
		t.Fatalf("the compromise mark went: %v", err)
	}
	if l := w.deps.Reputation.(*reputation.Store).Level(bad.ID()); l != reputation.Blocked {
		t.Fatalf("the block went: %s", l)
	}
	ex, err := w.deps.Export(ctx, bad.ID())
	if err != nil {
		t.Fatal(err)
	}
	stores := map[string]bool{}
	for _, k := range ex.Kept {
		stores[k.Store] = len(k.Items) > 0
	}
	if !stores[erasure.StoreCompromise] || !stores[erasure.StoreReputation] || len(ex.Held) != 0 {
		t.Fatalf("export of a compromised, blocked subject: held %v, kept %+v", ex.Held, ex.Kept)
	}
}

// TestServiceRefusesBadSubjects: a malformed ID and this agent's own ID are bad requests, nothing erased.
func TestServiceRefusesBadSubjects(t *testing.T) {
	w := newWorld(t)
	h := erasure.Service(w.deps).Handlers()
	for _, subj := range []string{"nobody", "", w.self.ID().String()} {
		raw, _ := json.Marshal(api.DataSubjectArgs{Subject: subj})
		for _, op := range []string{api.OpDataExport, api.OpDataErase} {
			if _, err := h[op](context.Background(), rbac.Cred{}, raw); control.CodeOf(err) != control.CodeBadRequest {
				t.Errorf("%s %q: %v, want bad_request", op, subj, err)
			}
		}
	}
	n := 0
	_ = audit.Query(context.Background(), w.dir, audit.Filter{Types: []string{string(audit.DataErased)}}, func(audit.Entry) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d data.erased records after refused requests", n)
	}
}
