package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

// FeedbackGiven: this agent signed feedback about a peer's result (agentctl feedback, or a vote of a
// replicated task). Actor: the caller ("uid:N") or "vote"; Subject: the rated peer; Details: task_id,
// rating, source (operator, vote), comment (operator's, never sent), sent_to (peers it went to).
const FeedbackGiven audit.EventType = "feedback.given"

// Feedback sources (FeedbackGiven's "source").
const (
	FeedbackOperator = "operator" // agentctl feedback
	FeedbackVote     = "vote"     // the vote of a replicated task (agreers +100, dissenters -100)
)

// OwnFeedback is what giving feedback needs of the reputation store besides Reputation.
type OwnFeedback interface {
	AddOwnFeedback(ctx context.Context, f reputation.Feedback) error
	Report(peer identity.ID) reputation.Report
}

// Giver signs feedback about the executors of tasks this agent submitted and sends it to the connected
// peers (the trust loop's sending half; the receiving half is Authz.dispatch → feedback). The task
// reference is the executor's signed result the engine stored, so receivers can confirm the task
// (FeedbackTask).
type Giver struct {
	z         *Authz
	issuer    Issuer
	own       OwnFeedback
	connected func() []identity.ID
}

// Giver builds the feedback giver: issuer signs (the identity key), own counts this agent's own
// opinion, connected lists the peers to send to.
func (z *Authz) Giver(issuer Issuer, own OwnFeedback, connected func() []identity.ID) *Giver {
	return &Giver{z: z, issuer: issuer, own: own, connected: connected}
}

// Give rates the executor of the submitted task taskID (rating -100..100): the feedback is signed, counted
// here (full weight, once per task) when source is FeedbackOperator, sent to every connected peer but
// the subject, and audited. A task that is not this agent's, not finished with a verified result, or
// already rated is refused with a control error that says so.
func (g *Giver) Give(ctx context.Context, actor, source, taskID string, rating int, comment string) (api.FeedbackResult, error) {
	if err := tasks.CheckTaskID(taskID); err != nil {
		return api.FeedbackResult{}, control.Errorf(control.CodeBadRequest, "--task: %v", err)
	}
	if rating < reputation.MinRating || rating > reputation.MaxRating {
		return api.FeedbackResult{}, control.Errorf(control.CodeBadRequest, "--score %d is outside %d..%d (-100: worst, 100: best)", rating, reputation.MinRating, reputation.MaxRating)
	}
	if err := checkComment(comment); err != nil {
		return api.FeedbackResult{}, control.Errorf(control.CodeBadRequest, "--comment: %v", err)
	}
	o, err := g.z.deps.Tasks.Outbound(taskID)
	if errors.Is(err, tasks.ErrNotFound) {
		return api.FeedbackResult{}, control.Errorf(control.CodeNotFound, "task %s: this agent submitted no such task (or its result was pruned)", taskID)
	}
	if err != nil {
		return api.FeedbackResult{}, err
	}
	if o.State != tasks.OutDone || len(o.Evidence) == 0 {
		return api.FeedbackResult{}, control.Errorf(control.CodeBadRequest, "task %s is %s: feedback needs the executor's signed result (a task that timed out or failed already counts against its executor)", taskID, o.State)
	}
	if len(o.Evidence) > reputation.MaxRefSize {
		return api.FeedbackResult{}, control.Errorf(control.CodeTooLarge, "task %s: its signed result is %d bytes, over the %d a feedback reference may carry", taskID, len(o.Evidence), reputation.MaxRefSize)
	}
	subject, err := identity.ParseID(o.To)
	if err != nil {
		return api.FeedbackResult{}, err
	}
	signer, err := g.issuer.Signer(ctx)
	if err != nil {
		return api.FeedbackResult{}, fmt.Errorf("the identity key, which signs feedback: %w", err)
	}
	f, err := reputation.SignFeedback(ctx, signer, g.z.self, subject, taskID, rating, o.Evidence, g.z.now())
	if err != nil {
		return api.FeedbackResult{}, err
	}
	if source == FeedbackOperator {
		if err := g.own.AddOwnFeedback(ctx, f); err != nil {
			if errors.Is(err, reputation.ErrFeedbackRefused) {
				return api.FeedbackResult{}, control.Errorf(control.CodeBadRequest, "task %s: %v", taskID, err)
			}
			return api.FeedbackResult{}, err
		}
	}
	res := api.FeedbackResult{TaskID: taskID, Subject: subject.String(), Rating: rating, SentTo: []string{}}
	payload := f.Encode()
	var peers []identity.ID
	if g.connected != nil {
		peers = g.connected()
	}
	for _, p := range peers {
		if p.Equal(subject) || p.Equal(g.z.self) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := g.z.Send(sctx, p.String(), envelope.Feedback, payload) // share_results (self.feedback.send)
		cancel()
		if err != nil {
			if res.NotSent == nil {
				res.NotSent = map[string]string{}
			}
			res.NotSent[p.String()] = err.Error()
			continue
		}
		res.SentTo = append(res.SentTo, p.String())
	}
	sort.Strings(res.SentTo)
	res.Reputation = g.own.Report(subject)
	details := map[string]any{"task_id": taskID, "rating": rating, "source": source, "sent_to": strings.Join(res.SentTo, ",")}
	if comment != "" {
		details["comment"] = comment
	}
	g.z.deps.Audit(FeedbackGiven, actor, subject.String(), audit.OutcomeSuccess, details)
	g.z.log.Info("feedback given", "task", taskID, "subject", subject, "rating", rating, "source", source, "sent_to", len(res.SentTo))
	return res, nil
}

// Vote is the replicated tasks' automatic feedback (consensus.Replicator.Feedback): agreers +100,
// dissenters -100, sent to the connected peers (the vote itself already recorded Agreed or Dissented
// here, so it is not counted twice).
func (g *Giver) Vote(ctx context.Context, taskID string, agreed bool) {
	rating := reputation.MinRating
	if agreed {
		rating = reputation.MaxRating
	}
	if _, err := g.Give(ctx, FeedbackVote, FeedbackVote, taskID, rating, ""); err != nil {
		g.z.log.Warn("feedback of a vote not given", "task", taskID, "err", err)
	}
}

// checkComment bounds an operator's comment: printable UTF-8, at most api.MaxFeedbackComment bytes.
func checkComment(s string) error {
	if len(s) > api.MaxFeedbackComment {
		return fmt.Errorf("%d bytes is over the limit of %d", len(s), api.MaxFeedbackComment)
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("the character %U is not printable", r)
		}
	}
	return nil
}

// opFeedback is the control operation task.feedback (agentctl feedback).
func (g *Giver) opFeedback(ctx context.Context, c rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.FeedbackArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	return g.Give(ctx, fmt.Sprintf("uid:%d", c.UID), FeedbackOperator, a.TaskID, a.Score, a.Comment)
}

// Service is the giver's part of the control API: task.feedback.
func (g *Giver) Service() api.Service {
	return api.Handlers{api.OpTaskFeedback: g.opFeedback}
}
