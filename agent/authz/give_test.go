package authz

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// giveTasks holds one outbound task.
type giveTasks struct {
	fakeTasks
	out map[string]*tasks.Outbound
}

func (g *giveTasks) Outbound(id string) (*tasks.Outbound, error) {
	if o, ok := g.out[id]; ok {
		return o, nil
	}
	return nil, tasks.ErrNotFound
}

// issuer is an agenttest identity as an Issuer.
type issuer struct{ id *agenttest.Identity }

func (i issuer) Signer(context.Context) (keystore.Signer, error) { return i.id.Current(), nil }
func (i issuer) State() identity.State                           { return i.id.State }

// feedbackPeers is a receiver's peer cache: key event logs and delegations.
type feedbackPeers struct {
	logs map[string]identity.Log
	dels map[string][]*delegation.Delegation
}

func (p feedbackPeers) Log(id string) (identity.Log, identity.State, bool, error) {
	l, ok := p.logs[id]
	if !ok {
		return identity.Log{}, identity.State{}, false, nil
	}
	st, err := l.Verify()
	return l, st, err == nil, err
}
func (p feedbackPeers) Delegations(id string) ([]*delegation.Delegation, error) {
	return p.dels[id], nil
}

// TestGiveFeedback: agentctl feedback signs feedback about the executor of a finished task, counts it here
// with full weight (once), sends it to every connected peer but the executor, and audits it with the
// comment; a third agent's reputation store accepts the message as it arrives (the reference confirms
// the task). Bad input is refused with a control error naming it.
func TestGiveFeedback(t *testing.T) {
	ctx := context.Background()
	self, exec, other := agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519)
	dm, err := delegation.NewManager(ctx, delegation.Config{Identity: exec.Current(), State: exec.State, Clock: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dm.Close)
	keys, err := dm.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tid := tasks.NewTaskID()
	doc := &tasks.ResultDoc{TaskID: tid, Requester: self.ID().String(), Handler: "echo", InputSHA256: tasks.HexSHA256([]byte("in")),
		Status: tasks.ResultOK, Output: []byte("in"), OutputSHA256: tasks.HexSHA256([]byte("in")), Started: time.Now().Unix(), Finished: time.Now().Unix()}
	evidence, _, err := tasks.SignResult(ctx, exec.ID().String(), doc, keys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pending := tasks.NewTaskID()
	tk := &giveTasks{out: map[string]*tasks.Outbound{
		tid:     {TaskID: tid, To: exec.ID().String(), State: tasks.OutDone, Evidence: evidence},
		pending: {TaskID: pending, To: exec.ID().String(), State: tasks.OutSent},
	}}
	var mu sync.Mutex
	sent := map[string][]byte{}
	var records []audit.Record
	z, err := New(ctx, parseConfig(t, ""), Deps{
		Self: fakeSelf{self}, Peers: &fakePeers{}, Held: &fakeHeld{}, Stakes: &fakeStakes{}, Reputation: &fakeRep{}, Tasks: tk, Metrics: &fakeMetrics{},
		Audit: func(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any) {
			mu.Lock()
			records = append(records, audit.Record{Type: typ, Actor: actor, Subject: subject, Outcome: outcome, Details: details})
			mu.Unlock()
		},
		Send: func(_ context.Context, peer string, typ envelope.MessageType, payload []byte) error {
			if typ != envelope.Feedback {
				return errors.New("unexpected " + string(typ))
			}
			mu.Lock()
			sent[peer] = payload
			mu.Unlock()
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(z.Close)
	own, err := reputation.Open(ctx, filepath.Join(t.TempDir(), "rep.db"), reputation.Config{}, reputation.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { own.Close() })
	g := z.Giver(issuer{self}, own, func() []identity.ID { return []identity.ID{exec.ID(), other.ID()} })

	before := own.Report(exec.ID()).Score
	res, err := g.Give(ctx, "uid:1000", FeedbackOperator, tid, -80, "wrong answer twice")
	if err != nil {
		t.Fatal(err)
	}
	if res.Subject != exec.ID().String() || res.Rating != -80 || len(res.SentTo) != 1 || res.SentTo[0] != other.ID().String() {
		t.Fatalf("result %+v: want the executor rated, sent to the other peer only", res)
	}
	if res.Reputation.Score >= before {
		t.Fatalf("the executor's score here went from %v to %v after -80", before, res.Reputation.Score)
	}
	mu.Lock()
	if len(records) != 1 || records[0].Type != FeedbackGiven || records[0].Details["comment"] != "wrong answer twice" || records[0].Actor != "uid:1000" {
		t.Fatalf("audit records: %+v", records)
	}
	msg := sent[other.ID().String()]
	mu.Unlock()

	// The third agent counts it: the reference is the executor's signed result for the giver.
	recv, err := reputation.Open(ctx, filepath.Join(t.TempDir(), "recv.db"), reputation.Config{}, reputation.Options{
		Resolve: func(id identity.ID) (identity.State, error) { return self.State, nil },
		CheckTask: FeedbackTask(feedbackPeers{logs: map[string]identity.Log{exec.ID().String(): exec.Log},
			dels: map[string][]*delegation.Delegation{exec.ID().String(): {keys.Delegation}}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { recv.Close() })
	f, err := reputation.DecodeFeedback(msg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := recv.AddFeedback(ctx, f); err != nil {
		t.Fatalf("the receiver refuses the feedback sent: %v", err)
	}

	// An agent without share_results (own_roles [] and no peer_node grant held) sends its feedback to
	// nobody: each peer is in NotSent with the reason.
	if err := z.Reload(parseConfig(t, "authorization: {own_roles: []}\n")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	clear(sent)
	mu.Unlock()
	res, err = g.Give(ctx, FeedbackVote, FeedbackVote, tid, 100, "")
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := len(sent)
	mu.Unlock()
	if n != 0 || len(res.SentTo) != 0 || !strings.Contains(res.NotSent[other.ID().String()], "executor_not_permitted") ||
		!strings.Contains(res.NotSent[other.ID().String()], "share_results") {
		t.Fatalf("feedback without share_results: sent to %d peers, result %+v", n, res)
	}
	if err := z.Reload(parseConfig(t, "")); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name, task, comment string
		rating              int
		code, want          string
	}{
		{"rated twice", tid, "", 50, control.CodeBadRequest, "already gave feedback"},
		{"unknown task", tasks.NewTaskID(), "", 50, control.CodeNotFound, "no such task"},
		{"no result yet", pending, "", 50, control.CodeBadRequest, "is sent"},
		{"score out of range", tid, "", 101, control.CodeBadRequest, "outside -100..100"},
		{"bad task ID", "../x", "", 1, control.CodeBadRequest, "--task"},
		{"control character in the comment", tid, "a\x1bb", 1, control.CodeBadRequest, "not printable"},
		{"long comment", tid, strings.Repeat("x", 501), 1, control.CodeBadRequest, "over the limit"},
	} {
		_, err := g.Give(ctx, "uid:1000", FeedbackOperator, c.task, c.rating, c.comment)
		if control.CodeOf(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (code %q), want %s mentioning %q", c.name, err, control.CodeOf(err), c.code, c.want)
		}
	}
}
