package authz

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/session"
)

// The executor's side of the grant model (docs/authorization.md §3a, docs/adr/0094): what this agent does
// for a peer is a self operation of rbac.Table, judged against this agent's own roles — the grants it
// holds (agentctl grant install) that are valid here (issuer one of its administrators, signature,
// revocation, expiry: rbac.Authorizer.AuthorizeHeld) plus authorization.own_roles (default [peer_node]).
// The message dispatcher checks running a task (Dispatch → taskRequest), and Send checks every outbound
// message whose type rbac.OutboundOp names; nothing else decides it.

// AuthorizeSelf answers whether this agent itself may do op (a self operation of rbac.Table) now: nil, or
// a *rbac.Denial with the rbac reason whose detail says what this agent lacks and how to give it. It
// audits nothing (checkSelf does).
func (z *Authz) AuthorizeSelf(ctx context.Context, op rbac.Operation) error {
	req, err := rbac.Required(op)
	if err != nil {
		return err
	}
	z.mu.Lock()
	own := z.own
	z.mu.Unlock()
	table := z.az.RolesTable()
	for _, r := range own {
		if table.Has(r, req.Permission) {
			return nil
		}
	}
	held, err := z.deps.Held.List()
	if err != nil {
		return fmt.Errorf("the grants this agent holds are not readable, so it does not %s: %w", op, err) // fail closed
	}
	err = z.az.AuthorizeHeld(ctx, z.self, held, op)
	var d *rbac.Denial
	if !errors.As(err, &d) {
		return err
	}
	out := *d
	out.Detail = fmt.Sprintf("this agent may not %s without %s: %s; its authorization.own_roles [%s] do not carry it: install a peer_node grant of one of its administrators (agentctl grant install FILE) or add peer_node to own_roles",
		opVerb(op), req.Permission, d.Detail, strings.Join(RoleNames(own), ", "))
	return &out
}

// opVerb says what a self operation does, for refusal messages.
func opVerb(op rbac.Operation) string {
	switch op {
	case rbac.SelfTaskExecute:
		return "run tasks for peers"
	case rbac.SelfResultSend:
		return "send task results to peers"
	case rbac.SelfFeedbackSend:
		return "send feedback to peers"
	case rbac.SelfLookupAnswer:
		return "answer peers' DHT lookups (its DHT runs in client mode)"
	}
	return string(op)
}

// checkSelf is the enforcement of a self operation done for peer: nil when this agent may (or, with
// authorization.enforce.grants false, would be refused: audited as a would-be refusal, outcome info);
// else an error wrapping the denial, after access.denied is audited (actor this agent, subject the
// operation, reason executor_not_permitted, rbac_reason the rbac reason, peer) and the metric counted.
func (z *Authz) checkSelf(ctx context.Context, op rbac.Operation, peer string, extra map[string]any) error {
	err := z.AuthorizeSelf(ctx, op)
	if err == nil {
		return nil
	}
	z.mu.Lock()
	enforce := z.enforceRB
	z.mu.Unlock()
	rr := rbac.ReasonOf(err)
	if rr == "" {
		enforce = true // not a denial (the held grants unreadable): never let it through
	}
	details := map[string]any{"rbac_reason": string(rr)}
	if peer != "" { // self.lookup.answer is judged for no peer in particular
		details["peer"] = peer
	}
	for k, v := range extra {
		details[k] = v
	}
	z.CountDenial(ReasonExecutorNotPermitted, enforce)
	z.report(z.self.String(), string(op), "", ReasonExecutorNotPermitted, err.Error(), enforce, details)
	if !enforce {
		return nil
	}
	return fmt.Errorf("%s: %w", ReasonExecutorNotPermitted, err)
}

// Send sends a message to a connected peer (Deps.Send) after checking the self operation that guards
// its type (rbac.OutboundOp: share_results for task_result and feedback). The task engine and the
// feedback giver send through it; a refused message is not sent, and the error says why (the engine
// keeps a refused result and sends it again later).
func (z *Authz) Send(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
	if op, ok := rbac.OutboundOp(string(t)); ok {
		extra := map[string]any{"message_type": string(t)}
		if id := peekTaskID(payload); id != "" {
			extra["task_id"] = id
		}
		if err := z.checkSelf(ctx, op, peer, extra); err != nil {
			return err
		}
	}
	return z.send(ctx, peer, t, payload)
}

// checkExecute is the dispatcher's check of a new task_request: this agent runs the task only when it may
// run it and send its result. A refusal is answered with an error_response (executor_not_permitted).
func (z *Authz) checkExecute(ctx context.Context, from string, msg *session.Message, taskID string) error {
	for _, op := range []rbac.Operation{rbac.SelfTaskExecute, rbac.SelfResultSend} {
		err := z.checkSelf(ctx, op, from, map[string]any{"task_id": taskID, "message_id": msg.Envelope.Header.MessageID})
		if err != nil {
			return z.answerRefusal(ctx, from, msg, taskID, ReasonExecutorNotPermitted, err.Error())
		}
	}
	return nil
}

// AnswersLookups is the judgement of self.lookup.answer (discover_peers, ADR 0094 amendment): whether this
// agent's DHT answers other agents' lookups (server mode) or only asks (client mode). The plugin host asks
// it at every start of a plugin process (host.Config.AnswerLookups), so a change of the agent's own roles
// (a grant installed or revoked, own_roles reloaded) takes effect at the plugin's next start. A refusal is
// audited and counted like every refused self operation; log-only (enforce.grants false) answers; held
// grants that cannot be read refuse (client mode: fails closed).
func (z *Authz) AnswersLookups(ctx context.Context) bool {
	return z.checkSelf(ctx, rbac.SelfLookupAnswer, "", nil) == nil
}
