package consensus

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
)

type connected []identity.ID

func (c connected) Connected() []identity.ID { return c }

// fakeRunner answers each peer's run with the output outputs names for it.
type fakeRunner struct {
	outputs map[string]string // peer -> output
	tasks   map[string]string // task ID -> peer
}

func (f *fakeRunner) Submit(_ context.Context, peer identity.ID, _ string, _ []byte) (string, error) {
	id := fmt.Sprintf("task-%d", len(f.tasks))
	f.tasks[id] = peer.String()
	return id, nil
}

func (f *fakeRunner) Wait(_ context.Context, taskID string) (*Run, error) {
	out := f.outputs[f.tasks[taskID]]
	return &Run{State: "done", Done: true, Verified: true, OK: true, Status: "ok", Output: []byte(out),
		Signed: []byte("signed " + out), Signature: []byte("sig"), ResponseTime: time.Second}, nil
}

// TestReplicatorFeedback: after an accepted vote the replicator gives automatic feedback for each
// agreeing peer's run (agreed) and each dissenting one's (not agreed), naming that peer's own task.
func TestReplicatorFeedback(t *testing.T) {
	w := newWorld(t)
	ps := peers(t, 3)
	run := &fakeRunner{outputs: map[string]string{ps[0].String(): "42", ps[1].String(): "42", ps[2].String(): "41"}, tasks: map[string]string{}}
	got := map[string]bool{} // peer -> agreed
	r := &Replicator{Rep: w.rep, Evidence: w.ev, Peers: connected(ps), Runner: run,
		Feedback: func(_ context.Context, taskID string, agreed bool) { got[run.tasks[taskID]] = agreed }}
	rep, err := r.Replicate(context.Background(), "group-1", "echo", []byte("in"), 3, ByReputation, nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Outcome.Accepted {
		t.Fatalf("not accepted: %+v", rep.Outcome)
	}
	want := map[string]bool{ps[0].String(): true, ps[1].String(): true, ps[2].String(): false}
	if len(got) != 3 {
		t.Fatalf("feedback for %d runs, want 3: %v", len(got), got)
	}
	for p, a := range want {
		if g, ok := got[p]; !ok || g != a {
			t.Errorf("peer %s: feedback agreed=%v (given %v), want %v", p, g, ok, a)
		}
	}
	// No accepted result (every peer differs): no feedback.
	got = map[string]bool{}
	run.outputs = map[string]string{ps[0].String(): "1", ps[1].String(): "2", ps[2].String(): "3"}
	rep, err = r.Replicate(context.Background(), "group-2", "echo", []byte("in"), 3, ByReputation, nil, time.Second)
	if err != nil || rep.Outcome.Accepted {
		t.Fatalf("split vote: %v %+v", err, rep.Outcome)
	}
	if len(got) != 0 {
		keys := make([]string, 0, len(got))
		for k := range got {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Fatalf("feedback after a vote with no accepted result: %v", keys)
	}
}
