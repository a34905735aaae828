package daemon

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/custos-agent/custos/agent/api"
	"time"

	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

// TaskVote is the audit record of a replicated task's vote. Actor: this agent; Subject: the group ID;
// Details: accepted, digest, mode, dissenting, silent.
const TaskVote audit.EventType = "task.vote"

func (d *Daemon) opTaskReplicate(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.ReplicateArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	if a.Redundancy < 1 || a.Redundancy > api.MaxRedundancy {
		return nil, control.Errorf(control.CodeBadRequest, "--redundancy %d is outside 1..%d", a.Redundancy, api.MaxRedundancy)
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
	if wait <= 0 || wait > api.MaxWait {
		return nil, control.Errorf(control.CodeBadRequest, "wait of %v is outside 0..%v", wait, api.MaxWait)
	}
	if !tasks.ValidHandlerName(a.Handler) {
		return nil, control.Errorf(control.CodeBadRequest, "handler name %q: want 1-32 of a-z 0-9 _ -, starting with a letter", a.Handler)
	}
	return d.replicate(ctx, a.Handler, a.Input, a.Redundancy, mode, wait)
}

// replicate runs the task through the consensus.Replicator (selection, submission, vote) and shows the
// outcome; the vote is audited.
func (d *Daemon) replicate(ctx context.Context, handler string, input []byte, k int, mode consensus.Mode, wait time.Duration) (*api.ReplicatedView, error) {
	var stakes *consensus.StakeTable
	if mode == consensus.ByStake || mode == consensus.Hybrid {
		var err error
		if stakes, err = d.authz.CurrentStakes(); err != nil {
			return nil, control.Errorf(control.CodeBadRequest, "--vote %s: %v", mode, err)
		}
	}
	group := tasks.NewTaskID()
	rep, err := d.replicator.Replicate(ctx, group, handler, input, k, mode, stakes, wait)
	var se *consensus.SubmitError
	switch {
	case errors.Is(err, consensus.ErrNotEnoughPeers):
		return nil, control.Errorf(control.CodeUnavailable, "--redundancy %d: %v", k, err)
	case errors.As(err, &se):
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	case err != nil:
		return nil, err
	}
	view := &api.ReplicatedView{Group: group, Handler: handler, InputSHA256: tasks.HexSHA256(input), Mode: string(mode), Redundancy: k,
		Quorum: consensus.DefaultQuorum, Votes: []api.VoteView{}, Evidence: []api.EvidenceView{}}
	outputs := map[[32]byte][]byte{}
	votes := map[string]*api.VoteView{}
	for _, p := range rep.Selected {
		view.Selected = append(view.Selected, p.String())
		o := rep.Runs[p.String()]
		v := &api.VoteView{Peer: p.String(), TaskID: rep.TaskIDs[p.String()], Vote: "silent"}
		votes[p.String()] = v
		if o == nil {
			continue
		}
		v.State, v.Error = o.State, o.Error
		if !o.Done {
			continue
		}
		if !o.Verified {
			v.Error = fmt.Sprintf("stored result does not verify: %v", o.VerifyErr)
			continue
		}
		v.Status = o.Status
		if !o.OK {
			continue // a failed run is no vote
		}
		dg := consensus.DigestOf(o.Output)
		v.Digest = hex.EncodeToString(dg[:])
		v.ResponseMS = o.ResponseTime.Milliseconds()
		outputs[dg] = o.Output
	}
	out := rep.Outcome
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
	for _, p := range rep.Selected {
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
	}
	for _, e := range rep.Evidence {
		view.Evidence = append(view.Evidence, api.EvidenceView{Peer: e.Peer, Kind: e.Kind, Digest: e.Digest, Accepted: e.Accepted, Evidence: json.RawMessage(e.Signed)})
	}
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

// replicaPeers are the connected peers, for the consensus.Replicator.
type replicaPeers struct{ d *Daemon }

func (r replicaPeers) Connected() []identity.ID {
	var out []identity.ID
	for _, s := range r.d.mgr.statuses() {
		if id, err := identity.ParseID(s.Peer); err == nil {
			out = append(out, id)
		}
	}
	return out
}

// replicaRunner submits and waits through the task engine, for the consensus.Replicator; a finished run's
// stored result is verified (fullView) before it counts.
type replicaRunner struct{ d *Daemon }

func (r replicaRunner) Submit(ctx context.Context, peer identity.ID, handler string, input []byte) (string, error) {
	o, err := r.d.engine.Submit(ctx, peer.String(), handler, input)
	if err != nil {
		return "", err
	}
	return o.TaskID, nil
}

func (r replicaRunner) Wait(ctx context.Context, taskID string) (*consensus.Run, error) {
	o, err := r.d.engine.Wait(ctx, taskID)
	if o == nil {
		return nil, err
	}
	run := &consensus.Run{State: o.State}
	if o.Error != "" {
		run.Error = o.ErrorCode + ": " + o.Error
	}
	if o.State != tasks.OutDone {
		return run, err
	}
	run.Done = true
	tv, verr := r.d.fullView(o)
	if verr != nil || tv.Result == nil {
		run.VerifyErr = verr
		return run, err
	}
	run.Verified = true
	run.Status, run.OK = tv.Result.Status, tv.Result.Status == tasks.ResultOK
	run.Output, run.Signature = tv.Result.Output, tv.Result.Signature
	run.Signed, _ = json.Marshal(tv.Result.Evidence)
	run.ResponseTime = o.Updated.Sub(o.Submitted)
	return run, err
}
