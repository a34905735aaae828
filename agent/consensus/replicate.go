package consensus

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/custos-agent/custos/identity"
)

// QuorumTolerance absorbs floating-point error in the weight sums: with three equal weights, two of them
// are exactly the default 2/3 quorum.
const QuorumTolerance = 1e-9

// DefaultQuorum is the share of the total weight a result needs to be accepted.
const DefaultQuorum = 2.0 / 3.0

// PeerList lists the connected peers a replicated task may run on.
type PeerList interface {
	Connected() []identity.ID
}

// Runner submits one run of a task to a peer and waits for its outcome.
type Runner interface {
	// Submit sends the task to the peer and returns its task ID.
	Submit(ctx context.Context, peer identity.ID, handler string, input []byte) (string, error)
	// Wait returns the run's outcome when it ends or ctx does; a nil Run with a deadline error is a run
	// still without an outcome.
	Wait(ctx context.Context, taskID string) (*Run, error)
}

// Run is one selected peer's run of a replicated task as the Runner saw it.
type Run struct {
	State string // the task's state
	Error string // "code: message" when it failed
	// Done says the run finished with a stored result; Verified that the result verifies (VerifyErr
	// says why not).
	Done      bool
	Verified  bool
	VerifyErr error
	// Status, Output, Signed and Signature are the verified result (Done and Verified).
	Status       string
	OK           bool // the handler succeeded: the run is a vote
	Output       []byte
	Signed       []byte
	Signature    []byte
	ResponseTime time.Duration
}

// SubmitError is a replicated task that could not be submitted to one of the selected peers.
type SubmitError struct {
	Peer identity.ID
	Err  error
}

func (e *SubmitError) Error() string { return fmt.Sprintf("submit to %s: %v", e.Peer, e.Err) }
func (e *SubmitError) Unwrap() error { return e.Err }

// Replicator runs one task on several peers chosen by reputation (Select), waits for their results and
// lets a Voter decide; the Voter records reputation and keeps dissenting results as evidence.
type Replicator struct {
	Rep      Reputation
	Evidence *EvidenceStore
	Peers    PeerList
	Runner   Runner
	// Feedback, when set, gives automatic feedback after an accepted vote (ADR 0090): agreed for each
	// agreeing peer's run, not agreed for each dissenting one (equivocating and silent peers get none:
	// the vote already recorded them). taskID is that peer's run.
	Feedback func(ctx context.Context, taskID string, agreed bool)

	mu         sync.Mutex
	replicated map[string]bool // task IDs of replicated submissions: the vote records their reputation
}

// Replication is the outcome of one replicated task.
type Replication struct {
	Selected []identity.ID
	TaskIDs  map[string]string // peer -> task ID
	Runs     map[string]*Run   // peer -> run (nil: no outcome in time)
	Outcome  Outcome
	// Evidence is what the vote kept of the dissenting and equivocating peers for this task.
	Evidence []Evidence
}

// IsReplicated reports whether a submitted task is part of a replicated submission under way.
func (r *Replicator) IsReplicated(taskID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.replicated[taskID]
}

// Replicate submits the task under group to k connected peers, waits at most wait for their results and
// decides by mode (stakes for the stake and hybrid modes).
func (r *Replicator) Replicate(ctx context.Context, group, handler string, input []byte, k int, mode Mode, stakes *StakeTable, wait time.Duration) (*Replication, error) {
	cands := r.Peers.Connected()
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		return nil, err
	}
	sel, err := Select(r.Rep, cands, k, rand.New(rand.NewChaCha8(seed)), SelectOptions{})
	if err != nil {
		if errors.Is(err, ErrNotEnoughPeers) {
			return nil, fmt.Errorf("%w (connected peers: %d; Restricted and Blocked peers are never chosen; connect more with agentctl peers connect)", err, len(cands))
		}
		return nil, err
	}
	rep := &Replication{Selected: sel, TaskIDs: map[string]string{}, Runs: map[string]*Run{}}
	var ids []string
	for _, p := range sel {
		id, err := r.Runner.Submit(ctx, p, handler, input)
		if err != nil {
			return nil, &SubmitError{Peer: p, Err: err}
		}
		r.mu.Lock()
		if r.replicated == nil {
			r.replicated = map[string]bool{}
		}
		r.replicated[id] = true
		r.mu.Unlock()
		rep.TaskIDs[p.String()] = id
		ids = append(ids, id)
	}
	defer func() {
		r.mu.Lock()
		for _, id := range ids {
			delete(r.replicated, id)
		}
		r.mu.Unlock()
	}()

	wctx, cancel := context.WithTimeout(ctx, wait)
	for _, p := range sel {
		o, err := r.Runner.Wait(wctx, rep.TaskIDs[p.String()])
		if o == nil && err != nil && !errors.Is(err, context.DeadlineExceeded) {
			cancel()
			return nil, err
		}
		rep.Runs[p.String()] = o
	}
	cancel()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	var results []Result
	for _, p := range sel {
		o := rep.Runs[p.String()]
		if o == nil || !o.Done || !o.Verified || !o.OK {
			continue // silent, failed, or a run that is no vote
		}
		results = append(results, Result{Peer: p, Digest: DigestOf(o.Output), Signed: o.Signed, Signature: o.Signature, ResponseTime: o.ResponseTime})
	}
	voter := &Voter{Rep: r.Rep, Mode: mode, Quorum: DefaultQuorum - QuorumTolerance, Evidence: r.Evidence}
	if stakes != nil {
		voter.SetStakes(stakes)
	}
	if rep.Outcome, err = voter.Decide(ctx, group, sel, results); err != nil {
		return nil, err
	}
	if r.Feedback != nil && rep.Outcome.Accepted {
		for _, p := range rep.Outcome.Agreeing {
			r.Feedback(ctx, rep.TaskIDs[p.String()], true)
		}
		for _, p := range rep.Outcome.Dissenting {
			r.Feedback(ctx, rep.TaskIDs[p.String()], false)
		}
	}
	for _, p := range append(append([]identity.ID{}, rep.Outcome.Dissenting...), rep.Outcome.Equivocating...) {
		evs, err := r.Evidence.ByPeer(p)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			if e.Task == group {
				rep.Evidence = append(rep.Evidence, e)
			}
		}
	}
	sort.SliceStable(rep.Evidence, func(i, j int) bool { return rep.Evidence[i].Peer < rep.Evidence[j].Peer })
	return rep, nil
}
