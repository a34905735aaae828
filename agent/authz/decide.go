package authz

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/policy"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
)

// Refusal codes of the handshake validator besides rbac's and policy's reasons (audit auth.failure
// details "refusal"; the handshake itself fails with reason validator_refused).
const (
	RefusalBadPuzzle         = string(reason.BadPuzzle)         // the admission puzzle was not solved (or not for this handshake)
	RefusalBlocked           = string(reason.Blocked)           // the peer's trust level is Blocked
	RefusalMalformedGrants   = string(reason.MalformedGrants)   // the presented grants do not decode
	RefusalGrantWrongSubject = string(reason.GrantWrongSubject) // a presented grant names another agent
)

// Reasons of message refusals besides rbac's and policy's (error_response code, audit, metric).
const (
	// ReasonUncorrelated: an error_response that answers nothing this agent sent to that peer.
	ReasonUncorrelated = string(reason.Uncorrelated)
	// ReasonExecutorNotPermitted: this agent does not hold what acting for the peer needs of it
	// (process_tasks to run its task, share_results to send a result or feedback, discover_peers to
	// answer DHT lookups; docs/adr/0094).
	ReasonExecutorNotPermitted = string(reason.ExecutorNotPermitted)
)

// refusal is a handshake validator's refusal with its code.
type refusal struct {
	code string
	err  error
}

func (r *refusal) Error() string { return r.code + ": " + r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

// RefusalCode makes a refusal a reason.Refusal: the handshake's alert names the code when it is about the
// grants the peer presented (reason.HandshakeRefusalAlerts), else says only validator_refused (ADR 0087).
func (r *refusal) RefusalCode() reason.Code { return reason.Code(r.code) }

// Refuse returns a validator refusal with its code.
func Refuse(code string, err error) error { return &refusal{code: code, err: err} }

// RefusalOf returns the validator's refusal code in err's chain ("" when there is none).
func RefusalOf(err error) string {
	var r *refusal
	if errors.As(err, &r) {
		return r.code
	}
	return ""
}

// IssuerKey returns what this agent knows of the key event log of a grant issuer (or stake table signer,
// feedback giver): its own log for itself, the issuer's cached verified log, or, when no log of the
// issuer is cached, identity.SignedAtOnly (generation 0 only: its ID's key). Signed objects are judged
// against it by identity.State.VerifySignedAt (docs/protocol.md, "Signing-generation validity";
// docs/adr/0049).
func (z *Authz) IssuerKey(id identity.ID) (identity.State, error) {
	if id.Equal(z.self) {
		return z.deps.Self.State(), nil
	}
	st, ok, err := z.deps.Peers.State(id.String())
	if err != nil {
		return identity.State{}, err
	}
	if ok {
		return st, nil
	}
	z.mu.Lock()
	require := z.requireLog
	z.mu.Unlock()
	if require {
		return identity.State{}, fmt.Errorf("no key event log of %s is held here and authorization.require_admin_log is set: list a copy of its kel.jsonl in authorization.admin_logs, or have a holder present it", id)
	}
	return identity.SignedAtOnly(id), nil
}

// Roles returns the roles a peer holds now: its valid grants plus the default peer roles.
func (z *Authz) Roles(ctx context.Context, id identity.ID) []rbac.Role {
	rs := z.az.Roles(ctx, id)
	z.mu.Lock()
	defaults := z.defaults
	z.mu.Unlock()
	for _, r := range defaults {
		if !slices.Contains(rs, r) {
			rs = append(rs, r)
		}
	}
	return rs
}

// RoleNames are the names of roles.
func RoleNames(rs []rbac.Role) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r)
	}
	return out
}

// authorize is rbac's AuthorizeOp, where the default peer roles also count.
func (z *Authz) authorize(ctx context.Context, id identity.ID, op rbac.Operation) error {
	err := z.az.AuthorizeOp(ctx, id, op)
	if err == nil || rbac.ReasonOf(err) == "" {
		return err
	}
	req, rerr := rbac.Required(op)
	if rerr != nil {
		return err
	}
	table := z.az.RolesTable()
	z.mu.Lock()
	defaults := z.defaults
	z.mu.Unlock()
	for _, r := range defaults {
		if table.Has(r, req.Permission) {
			return nil
		}
	}
	return err
}

// Puzzler is the session's Puzzler (nil when puzzles are disabled).
func (z *Authz) Puzzler() session.Puzzler {
	if z.adm == nil {
		return nil
	}
	return z.adm
}

// Presentable returns the grants this agent presents in the handshakes it starts (unexpired, not revoked,
// valid under what this agent knows of the issuer's key event log, newest first, at most
// rbac.MaxGrantList), with the key event log of each issuer whose grant names a generation
// above 0 (while the whole fits in rbac.MaxPresentation), encoded; nil when it holds none.
func (z *Authz) Presentable() []byte {
	gs, err := z.deps.Held.List()
	if err != nil {
		z.log.Warn("own grants not readable; presenting none", "err", err)
		return nil
	}
	now := z.now().Unix()
	var p rbac.Presentation
	for i := len(gs) - 1; i >= 0 && len(p.Grants) < rbac.MaxGrantList; i-- {
		if gs[i].Expires <= now || z.az.Revoked(gs[i].ID) {
			continue
		}
		// A grant this agent knows to be void (its issuer's log shows the signing generation was lost to a
		// recovery, or it was signed outside its generation) would only make peers refuse the handshake.
		if err := gs[i].VerifySignature(z.IssuerKey); err != nil {
			z.log.Debug("a held grant is not presented: it is not valid under its issuer's key event log", "grant", gs[i].ID, "err", err)
			continue
		}
		p.Grants = append(p.Grants, gs[i])
	}
	if len(p.Grants) == 0 {
		return nil
	}
	out := rbac.EncodePresentation(p)
	seen := map[string]bool{}
	for _, g := range p.Grants {
		if g.Gen == 0 || seen[g.Issuer] {
			continue
		}
		seen[g.Issuer] = true
		l := z.IssuerLog(g.Issuer)
		if l == nil {
			continue
		}
		q := rbac.Presentation{Grants: p.Grants, Logs: append(slices.Clone(p.Logs), l)}
		if enc := rbac.EncodePresentation(q); len(enc) <= rbac.MaxPresentation {
			p, out = q, enc
		} else {
			z.log.Warn("the key event log of a grant's issuer does not fit in the handshake; peers that do not know it refuse the grant",
				"issuer", g.Issuer, "grant", g.ID)
		}
	}
	return out
}

// IssuerLog returns the key event log (JSON lines) this agent knows of an issuer (its own, or the cached
// one), or nil.
func (z *Authz) IssuerLog(issuer string) []byte {
	if issuer == z.self.String() {
		l := z.deps.Self.Log()
		return l.Encode()
	}
	l, _, ok, err := z.deps.Peers.Log(issuer)
	if err != nil || !ok {
		return nil
	}
	return l.Encode()
}

// learnIssuerLogs merges presented key event logs of configured administrators into the peer cache
// (verified from inception; a fork marks the administrator compromised). Logs of other agents are
// ignored. It returns the first error for the log, and goes on with the others.
func (z *Authz) learnIssuerLogs(logs [][]byte) error {
	var first error
	for _, raw := range logs {
		first = cmp.Or(first, z.LearnLog(raw, ""))
	}
	return first
}

// LearnLog merges one key event log (JSON lines) into the peer cache: the log of issuer when issuer is
// not "", else of any configured administrator (others are ignored). This agent's own log is never taken
// from outside. An empty log is nothing to learn.
func (z *Authz) LearnLog(raw []byte, issuer string) error {
	if len(raw) == 0 {
		return nil
	}
	if raw[len(raw)-1] != '\n' {
		raw = append(slices.Clip(raw), '\n')
	}
	l, err := identity.DecodeLog(raw)
	if err != nil {
		return err
	}
	if len(l.Events) == 0 {
		return errors.New("empty key event log")
	}
	id, err := identity.ParseID(l.Events[0].ID)
	if err != nil {
		return err
	}
	switch {
	case issuer != "" && id.String() != issuer:
		return fmt.Errorf("the key event log is of %s, the record's issuer is %s", id, issuer)
	case issuer == "" && !z.az.IsAdmin(id), id.Equal(z.self):
		return nil
	}
	if _, err := z.deps.Peers.UpdateLog(id, &l); err != nil {
		return fmt.Errorf("key event log of %s: %w", id, err)
	}
	return nil
}

// Validate is the handshake validator (docs/authorization.md §7), cheapest check first: the admission
// puzzle, the peer's trust level, the grants it presents, then the resource policy's connection rules
// (country, time window). A refusal carries its code (RefusalOf) for the audit record.
func (z *Authz) Validate(ctx context.Context, p *session.Peer) error {
	peer := p.ID.String()
	if err := z.auditRefusal(); err != nil && p.Role == session.Initiator { // an inbound session (or its re-authentication)
		z.CountDenial(RefusalAuditUnavailable, true)
		return err
	}
	if p.Role == session.Initiator && z.adm != nil {
		if err := z.adm.Verify(p.Puzzle, p.Binding, p.Solution); err != nil {
			z.CountDenial(RefusalBadPuzzle, true)
			return Refuse(RefusalBadPuzzle, fmt.Errorf("admission puzzle: %w", err))
		}
	}
	if err := z.deps.Reputation.Admit(p.ID); err != nil {
		z.CountDenial(RefusalBlocked, true)
		return Refuse(RefusalBlocked, err)
	}
	if p.Role == session.Initiator && len(p.Grants) > 0 {
		if err := z.acceptGrants(ctx, p); err != nil {
			return err
		}
	}
	dec := z.pol.Connect(ctx, policy.Request{Peer: peer, Roles: z.Roles(ctx, p.ID), Addr: remoteIP(p.RemoteAddr)})
	if !dec.Allowed {
		z.CountDenial(string(dec.Reason), true)
		return Refuse(string(dec.Reason), errors.New(dec.Detail))
	}
	if dec.WouldDeny {
		z.report(peer, string(rbac.OpHandshake), "", string(dec.Reason), dec.Detail, false, map[string]any{"remote": p.RemoteAddr, "country": dec.Country})
	}
	return nil
}

// acceptGrants decodes the grants a peer presents and stores each (rbac.Authorizer.AddGrant verifies
// issuer, signature, revocation and expiry first). A bad grant refuses the handshake unless
// authorization.enforce.grants is false (then it is audited as a would-be denial and ignored).
func (z *Authz) acceptGrants(ctx context.Context, p *session.Peer) error {
	peer := p.ID.String()
	z.mu.Lock()
	enforce := z.enforceRB
	z.mu.Unlock()
	fail := func(code string, err error, grant string) error {
		z.CountDenial(code, enforce)
		if enforce {
			return Refuse(code, err)
		}
		z.report(peer, string(rbac.OpHandshake), "", code, err.Error(), false, map[string]any{"grant": grant})
		return nil
	}
	pres, err := rbac.DecodePresentation(p.Grants)
	if err != nil {
		return fail(RefusalMalformedGrants, err, "")
	}
	if err := z.learnIssuerLogs(pres.Logs); err != nil {
		z.log.Info("a presented key event log of an administrator was not taken", "peer", peer, "err", err)
	}
	gs := pres.Grants
	for _, g := range gs {
		if g.Subject != peer {
			if err := fail(RefusalGrantWrongSubject, fmt.Errorf("grant %s is for %s, not for the presenting agent %s", g.ID, g.Subject, peer), g.ID); err != nil {
				return err
			}
			continue
		}
		held := slices.ContainsFunc(z.az.Grants(p.ID), func(h rbac.Grant) bool { return h.ID == g.ID })
		if err := z.az.AddGrant(ctx, g); err != nil {
			code := string(rbac.ReasonOf(err))
			if code == "" {
				code = RefusalMalformedGrants
			}
			if err := fail(code, err, g.ID); err != nil {
				return err
			}
			continue
		}
		if !held {
			z.deps.Audit(audit.GrantAccepted, g.Issuer, peer, audit.OutcomeSuccess, map[string]any{
				"grant": g.ID, "role": string(g.Role), "expires": time.Unix(g.Expires, 0).UTC().Format(time.RFC3339)})
		}
	}
	return nil
}

// remoteIP extracts the IP address of a transport's remote address: host:port, or a /ip4/ or /ip6/
// multiaddr. The zero Addr (geo rules skipped) when there is none.
func remoteIP(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	parts := strings.Split(s, "/")
	if len(parts) >= 3 && parts[0] == "" && (parts[1] == "ip4" || parts[1] == "ip6") {
		if a, err := netip.ParseAddr(parts[2]); err == nil {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// Dispatch admits one verified message from a session's peer (RBAC, resource policy, task quota) and
// hands it on: feedback to reputation, task messages to the engine. A refused message is answered with an
// error_response carrying the reason code (when it names a task to answer about), audited and counted.
// Answers to this agent's own requests (task_response, task_progress, task_result, error_response about a
// task this agent sent to that peer, and the acknowledgement of a result it pushed) are authorized by
// that correlation rather than by a role (docs/adr/0023).
func (z *Authz) Dispatch(ctx context.Context, p *session.Peer, msg *session.Message) error {
	typ := msg.Envelope.Header.MessageType
	from := p.ID.String()
	taskID := peekTaskID(msg.Payload)
	answer := z.isAnswer(from, typ, taskID, msg.Payload)
	if typ == envelope.ErrorResponse && !answer {
		z.CountDenial(ReasonUncorrelated, true)
		z.report(from, string(typ), msg.Envelope.Header.MessageID, ReasonUncorrelated,
			"an error_response that answers no task this agent sent to this peer", true, map[string]any{"task_id": taskID})
		return nil // never answer an error with an error
	}
	if err := z.deps.Reputation.Admit(p.ID); err != nil { // blocked while its session was up (a block notice, ADR 0101)
		return z.refuseMessage(ctx, from, msg, taskID, RefusalBlocked, err.Error())
	}
	if !answer {
		if err := z.authorize(ctx, p.ID, rbac.Operation(typ)); err != nil {
			code := string(rbac.ReasonOf(err))
			if code == "" {
				code = string(rbac.PermissionDenied)
			}
			z.mu.Lock()
			enforce := z.enforceRB
			z.mu.Unlock()
			if enforce {
				return z.refuseMessage(ctx, from, msg, taskID, code, err.Error())
			}
			z.CountDenial(code, false)
			z.report(from, string(typ), msg.Envelope.Header.MessageID, code, err.Error(), false, map[string]any{"task_id": taskID})
		}
	}
	req := policy.Request{Peer: from, Roles: z.Roles(ctx, p.ID), Multiplier: z.deps.Reputation.Effects(z.deps.Reputation.Level(p.ID)).RateMultiplier,
		Addr: remoteIP(p.RemoteAddr), Bytes: int64(len(msg.Payload))}
	dec := z.pol.Admit(ctx, req)
	if !dec.Allowed {
		return z.refuseMessage(ctx, from, msg, taskID, string(dec.Reason), dec.Detail)
	}
	if dec.WouldDeny {
		z.CountDenial(string(dec.Reason), false)
		z.report(from, string(typ), msg.Envelope.Header.MessageID, string(dec.Reason), dec.Detail, false, map[string]any{"task_id": taskID})
	}
	switch typ {
	case envelope.Feedback:
		return z.feedback(ctx, from, msg.Payload)
	case envelope.RevocationSync:
		return z.handleCatchup(ctx, from, msg.Payload)
	case envelope.Heartbeat:
		return nil
	case envelope.TaskRequest:
		return z.taskRequest(ctx, from, msg, req, taskID)
	}
	return z.deps.Tasks.Handle(ctx, from, typ, msg.Payload)
}

// taskRequest reserves one of the requester's concurrent-task slots for a new task (policy.StartTask)
// until the task ends, then hands the request to the engine.
func (z *Authz) taskRequest(ctx context.Context, from string, msg *session.Message, req policy.Request, taskID string) error {
	ts := z.deps.Tasks
	if tasks.CheckTaskID(taskID) != nil {
		return ts.Handle(ctx, from, envelope.TaskRequest, msg.Payload) // malformed: the engine says why
	}
	if in, err := ts.Inbound(from, taskID); err == nil && in != nil {
		return ts.Handle(ctx, from, envelope.TaskRequest, msg.Payload) // a retry: answered from the store
	}
	if err := z.auditRefusal(); err != nil {
		if tr, ok := z.deps.Metrics.(interface{ TaskRefused(code string) }); ok {
			tr.TaskRefused(RefusalAuditUnavailable)
		}
		return z.refuseMessage(ctx, from, msg, taskID, RefusalAuditUnavailable, err.Error())
	}
	if err := z.checkExecute(ctx, from, msg, taskID); err != nil {
		return err
	}
	// A request on behalf of a client (a gateway's API key, ADR 0100) also takes a token of the (peer,
	// client) bucket, so one client cannot use up the peer's allowance. A request that does not decode
	// goes on to the engine, which answers it malformed.
	if r, err := tasks.DecodeRequest(msg.Payload); err == nil && r.OnBehalfOf != "" {
		dec := z.pol.AdmitOnBehalfOf(ctx, req, r.OnBehalfOf)
		if !dec.Allowed {
			return z.refuseMessage(ctx, from, msg, taskID, string(dec.Reason), dec.Detail)
		}
		if dec.WouldDeny {
			z.CountDenial(string(dec.Reason), false)
			z.report(from, string(envelope.TaskRequest), msg.Envelope.Header.MessageID, string(dec.Reason), dec.Detail, false,
				map[string]any{"task_id": taskID, "on_behalf_of": r.OnBehalfOf})
		}
	}
	dec, release := z.pol.StartTask(ctx, req)
	if !dec.Allowed {
		return z.refuseMessage(ctx, from, msg, taskID, string(dec.Reason), dec.Detail)
	}
	if dec.WouldDeny {
		z.CountDenial(string(dec.Reason), false)
		z.report(from, string(envelope.TaskRequest), msg.Envelope.Header.MessageID, string(dec.Reason), dec.Detail, false, map[string]any{"task_id": taskID})
	}
	key := from + "\x00" + taskID
	z.mu.Lock()
	if old := z.releases[key]; old != nil {
		old()
	}
	z.releases[key] = release
	z.mu.Unlock()
	err := ts.Handle(ctx, from, envelope.TaskRequest, msg.Payload)
	if in, serr := ts.Inbound(from, taskID); serr != nil || in == nil || in.State == tasks.InDone {
		z.release(from, taskID) // refused, or already finished
	}
	return err
}

// release frees a task's slot (idempotent).
func (z *Authz) release(peer, taskID string) {
	key := peer + "\x00" + taskID
	z.mu.Lock()
	rel := z.releases[key]
	delete(z.releases, key)
	z.mu.Unlock()
	if rel != nil {
		rel()
	}
}

// TaskEvent follows the task engine: a task that ended frees its slot; the result of a replicated task is
// left to the vote (it records the reputation).
func (z *Authz) TaskEvent(ev tasks.Event) {
	switch ev.Kind {
	case "finished", "interrupted", "refused":
		z.release(ev.Peer, ev.TaskID)
	}
}

// peekTaskID returns the task_id field of a task message's payload, binary or JSON ("" when there is none).
func peekTaskID(payload []byte) string { return tasks.PeekTaskID(payload) }

// isAnswer reports whether a message answers something this agent sent to that peer: a task it
// submitted to the peer (task_response "accepted", task_progress, task_result, error_response), or a
// result it pushed to the peer as its executor (task_response "result_received").
func (z *Authz) isAnswer(peer string, typ envelope.MessageType, taskID string, payload []byte) bool {
	if tasks.CheckTaskID(taskID) != nil {
		return false
	}
	outbound := func() bool {
		o, err := z.deps.Tasks.Outbound(taskID)
		return err == nil && o.To == peer
	}
	switch typ {
	case envelope.TaskProgress, envelope.TaskResult, envelope.ErrorResponse:
		return outbound()
	case envelope.TaskResponse:
		var r struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(payload, &r) == nil && r.Status == tasks.StatusResultReceived {
			in, err := z.deps.Tasks.Inbound(peer, taskID)
			return err == nil && in != nil
		}
		return outbound()
	}
	return false
}

// feedback counts signed feedback from the peer that signed it (reputation.Store.AddFeedback).
func (z *Authz) feedback(ctx context.Context, peer string, payload []byte) error {
	f, err := reputation.DecodeFeedback(payload)
	if err != nil {
		return err
	}
	if f.Giver != peer {
		return fmt.Errorf("feedback signed by %s arrived from %s: only a giver's own feedback is accepted", f.Giver, peer)
	}
	w, err := z.deps.Reputation.AddFeedback(ctx, f)
	if err != nil {
		return err
	}
	z.log.Debug("feedback counted", "giver", peer, "subject", f.Subject, "rating", f.Rating, "weight", w)
	return nil
}

// refuseMessage answers a refused message with an error_response naming the reason (when the message
// names a task to answer about), audits and counts it. It returns an error saying so (logged by the
// receive loop).
func (z *Authz) refuseMessage(ctx context.Context, from string, msg *session.Message, taskID, code, detail string) error {
	typ := msg.Envelope.Header.MessageType
	z.CountDenial(code, true)
	z.report(from, string(typ), msg.Envelope.Header.MessageID, code, detail, true, map[string]any{"task_id": taskID})
	return z.answerRefusal(ctx, from, msg, taskID, code, detail)
}

// answerRefusal sends the error_response of a refused message (when it names a task to answer about) and
// returns an error saying so; the caller has audited and counted the refusal.
func (z *Authz) answerRefusal(ctx context.Context, from string, msg *session.Message, taskID, code, detail string) error {
	typ := msg.Envelope.Header.MessageType
	if typ == envelope.ErrorResponse || tasks.CheckTaskID(taskID) != nil {
		return fmt.Errorf("%s refused (%s): %s", typ, code, detail)
	}
	em := &tasks.ErrorMessage{TaskID: taskID, Code: code, Message: clipText(string(typ)+" refused: "+detail, tasks.MaxErrorText)}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := z.send(sctx, from, envelope.ErrorResponse, em.Encode()); err != nil {
		return fmt.Errorf("%s refused (%s); the error_response was not sent: %w", typ, code, err)
	}
	return fmt.Errorf("%s refused (%s): %s", typ, code, detail)
}

func clipText(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// CountDenial counts a denial (or, with enforced false, a would-be denial) in the metrics.
func (z *Authz) CountDenial(code string, enforced bool) {
	z.deps.Metrics.AccessDenied(code, enforced)
	if !enforced {
		return
	}
	switch code {
	case string(policy.RateLimited):
		z.deps.Metrics.RateLimited("rate")
	case string(policy.QuotaExceeded):
		z.deps.Metrics.RateLimited("quota")
	}
}

// report writes the audit record of a denial: ratelimit.exceeded for rate limits and quotas,
// access.denied otherwise; a log-only would-be denial has outcome info and details would_deny. At most
// maxDenialRecordsPerSecond records per peer and reason per second are written; the next record says how
// many were left out ("suppressed").
func (z *Authz) report(peer, subject, messageID, code, detail string, enforced bool, extra map[string]any) {
	key := peer + "\x00" + code
	sec := z.now().Unix()
	z.mu.Lock()
	r := z.rates[key]
	if r == nil {
		if len(z.rates) > 10000 {
			clear(z.rates)
		}
		r = &auditRate{}
		z.rates[key] = r
	}
	if r.second != sec {
		r.second, r.n = sec, 0
	}
	r.n++
	if r.n > maxDenialRecordsPerSecond {
		r.suppressed++
		z.mu.Unlock()
		return
	}
	suppressed := r.suppressed
	r.suppressed = 0
	z.mu.Unlock()

	typ := audit.AccessDenied
	details := map[string]any{"reason": code, "error": clipText(detail, 512)}
	switch code {
	case string(policy.RateLimited):
		typ, details["limit"] = audit.RateLimited, "rate"
	case string(policy.QuotaExceeded):
		typ, details["limit"] = audit.RateLimited, "quota"
	}
	if req, err := rbac.Required(rbac.Operation(subject)); err == nil && req.Permission != "" {
		details["permission"] = string(req.Permission)
	}
	if messageID != "" {
		details["message_id"] = messageID
	}
	for k, v := range extra {
		if v != nil && v != "" {
			details[k] = v
		}
	}
	if suppressed > 0 {
		details["suppressed"] = suppressed
	}
	outcome := audit.OutcomeDenied
	if !enforced {
		outcome, details["would_deny"], details["mode"] = audit.OutcomeInfo, true, "log_only"
	}
	z.deps.Audit(typ, peer, subject, outcome, details)
	if enforced {
		z.log.Info("refused", "peer", peer, "operation", subject, "reason", code, "detail", detail)
	} else {
		z.log.Info("would deny (log-only)", "peer", peer, "operation", subject, "reason", code, "detail", detail)
	}
}

// AuthorizeLocal is AuthorizeOp with the rbac operation agent/api's table declares for op (api.Lookup);
// an operation missing from the table is refused.
func (z *Authz) AuthorizeLocal(ctx context.Context, c rbac.Cred, op string) error {
	spec, _ := api.Lookup(op)
	return z.AuthorizeOp(ctx, c, op, spec.Permission)
}

// AuthorizeOp is the control socket's check (control.Config.Authorize): the caller's kernel credentials
// map to roles (authorization.local), and one of them must carry the permission of rop, the rbac operation
// agent/api's table declares for op (control.Op.Permission; "" when the table has no entry: refused).
// Options.AuthorizeLocal, when set, must agree too.
func (z *Authz) AuthorizeOp(ctx context.Context, c rbac.Cred, op string, rop rbac.Operation) error {
	ok := rop != ""
	var err error
	if !ok {
		err = fmt.Errorf("%w: control operation %q has no entry in the control API's table", rbac.ErrUnknownOperation, op)
	} else {
		err = z.az.AuthorizeLocal(ctx, c, rop)
	}
	if err != nil {
		code := string(rbac.ReasonOf(err))
		if code == "" {
			code = string(rbac.PermissionDenied)
		}
		z.CountDenial(code, true)
		z.report(fmt.Sprintf("uid:%d", c.UID), string(rop), "", code, err.Error(), true, map[string]any{"control_op": op, "uid": c.UID, "gid": c.GID, "pid": c.PID})
		return control.Errorf(control.CodeDenied, "%v", err)
	}
	if z.deps.AuthorizeLocal != nil {
		return z.deps.AuthorizeLocal(ctx, c, op)
	}
	return nil
}
