package daemon

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/identity"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
)

// TaskVote is the audit record of a replicated task's vote. Actor: this agent; Subject: the group ID;
// Details: accepted, digest, mode, dissenting, silent.
const TaskVote audit.EventType = "task.vote"

// quorumTolerance absorbs floating-point error in the weight sums: with three equal weights, two of
// them are exactly the default 2/3 quorum.
const quorumTolerance = 1e-9

func (d *Daemon) opTaskReplicate(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a ReplicateArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	if a.Redundancy < 1 || a.Redundancy > MaxRedundancy {
		return nil, control.Errorf(control.CodeBadRequest, "--redundancy %d is outside 1..%d", a.Redundancy, MaxRedundancy)
	}
	if a.Vote == "" {
		a.Vote = string(consensus.ByReputation)
	}
	mode, err := consensus.ParseMode(a.Vote)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "--vote: %v", err)
	}
	wait := scaled(a.WaitMS, time.Millisecond)
	if a.WaitMS == 0 {
		wait = 2 * time.Minute
	}
	if wait <= 0 || wait > MaxWait {
		return nil, control.Errorf(control.CodeBadRequest, "wait of %v is outside 0..%v", wait, MaxWait)
	}
	if !tasks.ValidHandlerName(a.Handler) {
		return nil, control.Errorf(control.CodeBadRequest, "handler name %q: want 1-32 of a-z 0-9 _ -, starting with a letter", a.Handler)
	}
	return d.authz.replicate(ctx, a.Handler, a.Input, a.Redundancy, mode, wait)
}

// replicate submits the task to k connected peers chosen by consensus.Select, waits for their results,
// and lets a consensus.Voter decide (it records reputation and keeps dissenting results as evidence).
func (z *authz) replicate(ctx context.Context, handler string, input []byte, k int, mode consensus.Mode, wait time.Duration) (*ReplicatedView, error) {
	d := z.d
	var stakes *consensus.StakeTable
	if mode == consensus.ByStake || mode == consensus.Hybrid {
		var err error
		if stakes, err = z.currentStakes(); err != nil {
			return nil, control.Errorf(control.CodeBadRequest, "--vote %s: %v", mode, err)
		}
	}
	var cands []identity.ID
	for _, s := range d.mgr.statuses() {
		if id, err := identity.ParseID(s.Peer); err == nil {
			cands = append(cands, id)
		}
	}
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		return nil, err
	}
	sel, err := consensus.Select(d.rep, cands, k, rand.New(rand.NewChaCha8(seed)), consensus.SelectOptions{})
	if err != nil {
		if errors.Is(err, consensus.ErrNotEnoughPeers) {
			return nil, control.Errorf(control.CodeUnavailable, "--redundancy %d: %v (connected peers: %d; Restricted and Blocked peers are never chosen; connect more with agentctl peers connect)", k, err, len(cands))
		}
		return nil, err
	}
	group := tasks.NewTaskID()
	view := &ReplicatedView{Group: group, Handler: handler, InputSHA256: tasks.HexSHA256(input), Mode: string(mode), Redundancy: k,
		Quorum: 2.0 / 3.0, Votes: []VoteView{}, Evidence: []EvidenceView{}}
	byPeer := map[string]string{} // peer -> task ID
	var ids []string
	for _, p := range sel {
		o, err := d.engine.Submit(ctx, p.String(), handler, input)
		if err != nil {
			return nil, control.Errorf(control.CodeBadRequest, "submit to %s: %v", p, err)
		}
		z.mu.Lock()
		z.replicated[o.TaskID] = true
		z.mu.Unlock()
		byPeer[p.String()] = o.TaskID
		ids = append(ids, o.TaskID)
		view.Selected = append(view.Selected, p.String())
	}
	defer func() {
		z.mu.Lock()
		for _, id := range ids {
			delete(z.replicated, id)
		}
		z.mu.Unlock()
	}()

	wctx, cancel := context.WithTimeout(ctx, wait)
	outs := map[string]*tasks.Outbound{}
	for _, p := range sel {
		o, err := d.engine.Wait(wctx, byPeer[p.String()])
		if o == nil && err != nil && !errors.Is(err, context.DeadlineExceeded) {
			cancel()
			return nil, err
		}
		outs[p.String()] = o
	}
	cancel()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	var results []consensus.Result
	outputs := map[[32]byte][]byte{}
	votes := map[string]*VoteView{}
	for _, p := range sel {
		o := outs[p.String()]
		v := &VoteView{Peer: p.String(), TaskID: byPeer[p.String()], Vote: "silent"}
		votes[p.String()] = v
		if o == nil {
			continue
		}
		v.State = o.State
		if o.Error != "" {
			v.Error = o.ErrorCode + ": " + o.Error
		}
		if o.State != tasks.OutDone {
			continue
		}
		tv, err := d.fullView(o)
		if err != nil || tv.Result == nil {
			v.Error = fmt.Sprintf("stored result does not verify: %v", err)
			continue
		}
		v.Status = tv.Result.Status
		if tv.Result.Status != tasks.ResultOK {
			continue // a failed run is no vote
		}
		dg := consensus.DigestOf(tv.Result.Output)
		v.Digest = hex.EncodeToString(dg[:])
		rt := o.Updated.Sub(o.Submitted)
		v.ResponseMS = rt.Milliseconds()
		signed, _ := json.Marshal(tv.Result.Evidence)
		outputs[dg] = tv.Result.Output
		results = append(results, consensus.Result{Peer: p, Digest: dg, Signed: signed, Signature: tv.Result.Signature, ResponseTime: rt})
	}
	voter := &consensus.Voter{Rep: d.rep, Mode: mode, Quorum: 2.0/3.0 - quorumTolerance, Evidence: z.evidence}
	if stakes != nil {
		voter.SetStakes(stakes)
	}
	out, err := voter.Decide(ctx, group, sel, results)
	if err != nil {
		return nil, err
	}
	view.Accepted, view.Share, view.Weight, view.Total, view.Reason = out.Accepted, out.Share, out.Weight, out.Total, out.Reason
	if out.Accepted {
		view.Digest = hex.EncodeToString(out.Digest[:])
		view.Output = outputs[out.Digest]
		view.OutputSHA256 = tasks.HexSHA256(view.Output)
	}
	mark := func(ids []identity.ID, vote string) {
		for _, id := range ids {
			if v := votes[id.String()]; v != nil {
				v.Vote = vote
			}
		}
	}
	mark(out.Agreeing, "agree")
	mark(out.Dissenting, "dissent")
	mark(out.Equivocating, "equivocating")
	for _, p := range sel {
		v := votes[p.String()]
		v.Weight = out.Weights[p.String()]
		if !out.Accepted && v.Digest != "" {
			v.Vote = "no_quorum"
		}
		view.Votes = append(view.Votes, *v)
	}
	var dissent []string
	for _, p := range append(append([]identity.ID{}, out.Dissenting...), out.Equivocating...) {
		dissent = append(dissent, p.String())
		evs, err := z.evidence.ByPeer(p)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			if e.Task == group {
				view.Evidence = append(view.Evidence, EvidenceView{Peer: e.Peer, Kind: e.Kind, Digest: e.Digest, Accepted: e.Accepted, Evidence: json.RawMessage(e.Signed)})
			}
		}
	}
	sort.Slice(view.Evidence, func(i, j int) bool { return view.Evidence[i].Peer < view.Evidence[j].Peer })
	details := map[string]any{"accepted": out.Accepted, "mode": string(mode), "handler": handler, "redundancy": k,
		"share": out.Share, "dissenting": fmt.Sprint(dissent), "silent": len(out.Silent)}
	if out.Accepted {
		details["digest"] = view.Digest
	} else {
		details["reason"] = out.Reason
	}
	outcome := audit.OutcomeSuccess
	if !out.Accepted {
		outcome = audit.OutcomeFailure
	}
	d.record(TaskVote, d.id.String(), group, outcome, details)
	return view, nil
}
