// Package taskops is the tasks room's part of the control API: task.submit, task.get, task.list,
// task.cancel and task.replicate (their permissions and types: agent/api.Table). A replicated task runs through
// agent/consensus's Replicator (peer selection, submission, the vote), whose Runner here submits and
// waits through the task engine; the vote is audited (TaskVote). Its dependencies are the small
// interfaces below, never the daemon.
package taskops

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

// TaskVote is the audit record of a replicated task's vote. Actor: this agent; Subject: the group ID;
// Details: accepted, digest, mode, dissenting, silent.
const TaskVote audit.EventType = "task.vote"

// Engine is the task engine (agent/tasks.Engine) as the operations see it.
type Engine interface {
	Submit(ctx context.Context, to, handler string, input []byte) (*tasks.Outbound, error)
	SubmitTask(ctx context.Context, s tasks.Submission) (*tasks.Outbound, error)
	Get(id string) (*tasks.Outbound, error)
	Wait(ctx context.Context, id string) (*tasks.Outbound, error)
	MarkFetched(id string) error
	List() ([]*tasks.Outbound, error)
	Cancel(id string) (*tasks.Outbound, error)
}

// Replicator runs a replicated task (agent/consensus.Replicator).
type Replicator interface {
	Replicate(ctx context.Context, group, handler string, input []byte, k int, mode consensus.Mode, stakes *consensus.StakeTable, wait time.Duration) (*consensus.Replication, error)
}

// Deps are what the task operations need.
type Deps struct {
	Self       identity.ID
	Engine     Engine
	Replicator Replicator
	// Stakes is the stake table in force (votes by stake; agent/authz.Authz.CurrentStakes).
	Stakes func() (*consensus.StakeTable, error)
	// Audit appends an audit record (the vote); it never fails the caller.
	Audit func(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any)
}

// New is the tasks room's Service.
func New(d Deps) api.Service {
	o := &ops{d}
	return api.Handlers{
		api.OpTaskSubmit:    o.opSubmit,
		api.OpTaskGet:       o.opTaskGet,
		api.OpTaskList:      o.opTaskList,
		api.OpTaskReplicate: o.opTaskReplicate,
		api.OpTaskCancel:    o.opTaskCancel,
	}
}

type ops struct{ Deps }

// View is the view of an outbound task without its result.
func View(o *tasks.Outbound) *api.TaskView {
	return &api.TaskView{TaskID: o.TaskID, To: o.To, Handler: o.Handler, State: o.State, InputSHA256: o.InputSHA256,
		Submitted: o.Submitted, Updated: o.Updated, Attempts: o.Attempts, ErrorCode: o.ErrorCode, Error: o.Error, OnBehalfOf: o.OnBehalfOf}
}

// FullView is the view of an outbound task with, when it is done, its result: the stored evidence is
// verified again against the executor's key event log and delegation (the requester is self).
func FullView(o *tasks.Outbound, self string) (*api.TaskView, error) {
	v := View(o)
	if o.State != tasks.OutDone {
		return v, nil
	}
	log, err := identity.DecodeLog(o.KeyEventLog)
	if err != nil {
		return nil, fmt.Errorf("stored key event log of %s: %w", o.To, err)
	}
	e, doc, err := tasks.VerifyResult(o.Evidence, o.Delegation, log, tasks.Expect{TaskID: o.TaskID, Executor: o.To,
		Requester: self, Handler: o.Handler, InputSHA256: o.InputSHA256})
	if err != nil {
		return nil, fmt.Errorf("stored result of task %s: %w", o.TaskID, err)
	}
	dl, err := delegation.Decode(o.Delegation)
	if err != nil {
		return nil, err
	}
	ev, err := tasks.NewEvidence(o.Evidence, o.Delegation, o.KeyEventLog)
	if err != nil {
		return nil, err
	}
	v.Result = &api.ResultView{Status: doc.Status, Output: doc.Output, OutputSHA256: doc.OutputSHA256, Error: doc.Error,
		Executor: e.Header.SenderID, Started: unixUTC(doc.Started), Finished: unixUTC(doc.Finished), Signature: e.Signature,
		SignedAt: unixUTC(e.Header.Timestamp), OperationalKey: identity.Base64().EncodeToString(dl.OpKey), OperationalAlgorithm: string(dl.OpAlg),
		DelegationGeneration: dl.Generation, DelegationNotAfter: unixUTC(dl.NotAfter), Verified: true, Evidence: ev}
	return v, nil
}

func unixUTC(s int64) time.Time { return time.Unix(s, 0).UTC() }

func (d *ops) opSubmit(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.SubmitArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	o, err := d.Engine.SubmitTask(ctx, tasks.Submission{To: a.To, Handler: a.Handler, Input: a.Input, OnBehalfOf: a.OnBehalfOf})
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	return View(o), nil
}

func (d *ops) opTaskGet(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.GetArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	if err := tasks.CheckTaskID(a.TaskID); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	wait := api.Scaled(a.WaitMS, time.Millisecond)
	if wait < 0 || wait > api.MaxWait {
		return nil, control.Errorf(control.CodeBadRequest, "wait of %v is outside 0..%v", wait, api.MaxWait)
	}
	var o *tasks.Outbound
	var err error
	if a.OnBehalfOf != "" {
		if o, err = d.Engine.Get(a.TaskID); err == nil && o.OnBehalfOf != a.OnBehalfOf {
			err = tasks.ErrNotFound // another client's task: not found, without waiting (its timing would tell)
		}
	}
	switch {
	case err != nil:
	case wait > 0:
		wctx, cancel := context.WithTimeout(ctx, wait)
		o, err = d.Engine.Wait(wctx, a.TaskID)
		cancel()
		if err != nil && o != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = nil // not final yet: answer with the current state
		}
	case o == nil:
		o, err = d.Engine.Get(a.TaskID)
	}
	if errors.Is(err, tasks.ErrNotFound) {
		return nil, control.Errorf(control.CodeNotFound, "no task %s was submitted through this agent", a.TaskID)
	}
	if err != nil {
		return nil, err
	}
	v, err := FullView(o, d.Self.String())
	if err != nil {
		return nil, err
	}
	if tasks.Final(o.State) {
		_ = d.Engine.MarkFetched(o.TaskID)
	}
	return v, nil
}

func (d *ops) opTaskList(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	outs, err := d.Engine.List()
	if err != nil {
		return nil, err
	}
	vs := []*api.TaskView{}
	for _, o := range outs {
		vs = append(vs, View(o))
	}
	return vs, nil
}

func (d *ops) opTaskReplicate(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
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
	wait := api.Scaled(a.WaitMS, time.Millisecond)
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
func (d *ops) replicate(ctx context.Context, handler string, input []byte, k int, mode consensus.Mode, wait time.Duration) (*api.ReplicatedView, error) {
	var stakes *consensus.StakeTable
	if mode == consensus.ByStake || mode == consensus.Hybrid {
		var err error
		if stakes, err = d.Stakes(); err != nil {
			return nil, control.Errorf(control.CodeBadRequest, "--vote %s: %v", mode, err)
		}
	}
	group := tasks.NewTaskID()
	rep, err := d.Replicator.Replicate(ctx, group, handler, input, k, mode, stakes, wait)
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
	d.Audit(TaskVote, d.Self.String(), group, outcome, details)
	return view, nil
}

// Runner is the consensus.Runner of replicated tasks: it submits and waits through the task engine; a
// finished run's stored result is verified (FullView) before it counts.
type Runner struct {
	Engine Engine
	Self   identity.ID
}

// Submit implements consensus.Runner.
func (r Runner) Submit(ctx context.Context, peer identity.ID, handler string, input []byte) (string, error) {
	o, err := r.Engine.Submit(ctx, peer.String(), handler, input)
	if err != nil {
		return "", err
	}
	return o.TaskID, nil
}

// Wait implements consensus.Runner.
func (r Runner) Wait(ctx context.Context, taskID string) (*consensus.Run, error) {
	o, err := r.Engine.Wait(ctx, taskID)
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
	tv, verr := FullView(o, r.Self.String())
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

// opTaskCancel gives up a submitted task (agentctl task cancel): it fails with code cancelled, is no
// longer sent, and its executor is not charged.
func (o *ops) opTaskCancel(_ context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.CancelArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	if err := tasks.CheckTaskID(a.TaskID); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "task ID: %v", err)
	}
	t, err := o.Engine.Cancel(a.TaskID)
	switch {
	case errors.Is(err, tasks.ErrNotFound):
		return nil, control.Errorf(control.CodeNotFound, "no task %s was submitted through this agent", a.TaskID)
	case errors.Is(err, tasks.ErrFinal):
		return nil, control.Errorf(control.CodeBadRequest, "%v: nothing to cancel (agentctl task result %s shows it)", err, a.TaskID)
	case err != nil:
		return nil, err
	}
	return View(t), nil
}
