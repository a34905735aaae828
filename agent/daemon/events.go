package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/metrics"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports/host"
)

// Audit event types the daemon writes besides audit's own constants.
const (
	// ControlRequest: a control-socket request that changed something, failed or was denied. Actor:
	// "uid:N" (from SO_PEERCRED); Subject: the operation; Details: uid, gid, pid, code.
	ControlRequest audit.EventType = "control.request"
	// TaskSubmitted, TaskAccepted, TaskFinished, TaskResult, TaskRefused, TaskResultInvalid: the task
	// protocol (agent/tasks). Actor: the peer; Subject: the task ID; Details: handler, status.
	TaskSubmitted     audit.EventType = "task.submitted"
	TaskAccepted      audit.EventType = "task.accepted"
	TaskFinished      audit.EventType = "task.finished"
	TaskResult        audit.EventType = "task.result"
	TaskRefused       audit.EventType = "task.refused"
	TaskResultInvalid audit.EventType = "task.result_invalid"
)

// record appends an audit record, logging (never failing the caller) when the log refuses it.
func (d *Daemon) record(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any) {
	if d.audit == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := d.audit.Append(ctx, audit.Record{Type: typ, Actor: actor, Subject: subject, Outcome: outcome, Details: details}); err != nil {
		d.log.Error("audit record not written", "type", typ, "err", err)
	}
}

// sessionEvent reports a handshake, re-authentication or refusal to the audit log and metrics.
func (d *Daemon) sessionEvent(transport, remote string, ev session.Event) {
	// Re-authentications refused for their rate are audited too: a request refused (reauth_refused, the
	// session goes on) and a re-authentication refused (the session closed with reauth_rate_limited).
	rateLimited := ev.Kind == "reauth_refused" || (ev.Kind == "refused" && reason.Of(ev.Err) == reason.ReauthRateLimited)
	if ev.Kind != "handshake" && ev.Kind != "reauth" && !rateLimited {
		return
	}
	details := map[string]any{"transport": transport, "remote": remote, "role": ev.Role.String(), "kind": ev.Kind}
	if ev.Err == nil {
		d.metrics.AuthSucceeded()
		d.record(audit.AuthSuccess, ev.Peer, ev.Peer, audit.OutcomeSuccess, details)
		return
	}
	code := reason.Of(ev.Err)
	d.metrics.AuthFailed(string(code))
	details["reason"] = string(code)
	details["error"] = ev.Err.Error()
	if r := refusalOf(ev.Err); r != "" {
		details["refusal"] = r // authz.go: why the validator refused (blocked, bad_puzzle, grant_expired, geo_denied, ...)
	}
	outcome := audit.OutcomeFailure
	if code == reason.ValidatorRefused || code == reason.ReauthRateLimited {
		outcome = audit.OutcomeDenied
	}
	d.record(audit.AuthFailure, ev.Peer, ev.Peer, outcome, details)
	if code == reason.KeyLogFork {
		// Two different key events for one generation of the peer's identity: its keys are compromised.
		d.record(audit.AlertRaised, "agent", ev.Peer, audit.OutcomeFailure, map[string]any{
			"alert": "peer_key_log_fork", "severity": "critical",
			"summary": "the peer's key event log forks from the cached one; the peer is marked compromised and refused from now on",
		})
		d.log.Error("security alert: peer key event log fork", "peer", ev.Peer, "transport", transport, "remote", remote)
	}
	d.log.Info("handshake failed", "peer", ev.Peer, "transport", transport, "remote", remote, "role", ev.Role, "reason", code, "err", ev.Err)
}

// observer receives the plugin supervisors' events.
type observer struct{ d *Daemon }

// PluginRestarted implements host.Observer: audit, metric, and re-dial every target at once.
func (o observer) PluginRestarted(ev host.RestartEvent) {
	d := o.d
	d.metrics.PluginRestarted(ev.Transport)
	d.mgr.wakeAll()
	go func() {
		cause := ""
		if ev.Cause != nil {
			cause = ev.Cause.Error()
		}
		details := map[string]any{"attempt": ev.Restarts, "pid": ev.PID, "downtime_ms": ev.Downtime.Milliseconds(), "error": cause}
		if ts := d.transport(ev.Transport); ts != nil {
			details["path"], details["sha256"] = ts.cfg.Plugin, ts.cfg.SHA256
			prot := ts.t.Sandbox()
			details["sandbox"] = prot.String()
			d.metrics.PluginSandbox(ev.Transport, sandboxGauges(prot))
		}
		d.record(audit.PluginCrashed, "agent", ev.Transport, audit.OutcomeFailure, map[string]any{"error": cause})
		d.record(audit.PluginRestarted, "agent", ev.Transport, audit.OutcomeSuccess, details)
		d.log.Warn("transport plugin restarted", "transport", ev.Transport, "restarts", ev.Restarts, "pid", ev.PID, "downtime", ev.Downtime, "cause", cause)
	}()
}

// PeerRefused implements host.Observer.
func (o observer) PeerRefused(transport, remote string, err error) {
	d := o.d
	code := "bad_binding"
	if errors.Is(err, host.ErrPeerMismatch) {
		code = "peer_mismatch"
	}
	d.metrics.AuthFailed(code)
	go d.record(audit.AuthFailure, "", "", audit.OutcomeFailure, map[string]any{"transport": transport, "remote": remote, "reason": code, "error": err.Error()})
}

// taskEvent records the task protocol's events.
func (d *Daemon) taskEvent(ev tasks.Event) {
	if d.authz != nil {
		d.authz.TaskEvent(ev) // frees the requester's task slot when a task ends
	}
	var typ audit.EventType
	outcome := audit.OutcomeSuccess
	switch ev.Kind {
	case "submitted":
		typ = TaskSubmitted
	case "accepted":
		typ = TaskAccepted
	case "finished":
		typ = TaskFinished
		if ev.Status != tasks.ResultOK {
			outcome = audit.OutcomeFailure
			d.metrics.OperationFailed("task")
		}
	case "result":
		typ = TaskResult
		d.observeResult(ev)
	case "refused", "failed":
		typ, outcome = TaskRefused, audit.OutcomeDenied
	case "result_invalid":
		typ, outcome = TaskResultInvalid, audit.OutcomeFailure
		d.observeResult(ev)
	default:
		return
	}
	details := map[string]any{"handler": ev.Handler}
	if ev.Status != "" {
		details["status"] = ev.Status
	}
	if ev.Err != nil {
		details["error"] = ev.Err.Error()
	}
	d.record(typ, ev.Peer, ev.TaskID, outcome, details)
}

// observeResult feeds a verified (or refused) result into the executor's reputation, with the response
// time of a completed task. The results of a replicated task are left to its vote (authz_replicate.go).
func (d *Daemon) observeResult(ev tasks.Event) {
	id, err := parseID(ev.Peer)
	if err != nil || (d.replicator != nil && d.replicator.IsReplicated(ev.TaskID)) {
		return
	}
	obs := reputation.Observation{Peer: id, Kind: reputation.Completed}
	switch {
	case ev.Kind == "result_invalid":
		obs.Kind = reputation.ProtocolError
	case ev.Status != tasks.ResultOK:
		obs.Kind = reputation.Failed
	default:
		if o, err := d.engine.Get(ev.TaskID); err == nil && o.Updated.After(o.Submitted) {
			obs.ResponseTime = o.Updated.Sub(o.Submitted)
		}
	}
	if err := d.rep.Record(context.Background(), obs); err != nil {
		d.log.Debug("reputation not recorded", "peer", ev.Peer, "err", err)
	}
}

// controlRequest records a control-socket request with the caller's kernel-reported identity.
func (d *Daemon) controlRequest(c rbac.Cred, op string, err error) {
	outcome, details := audit.OutcomeSuccess, map[string]any{"uid": c.UID, "gid": c.GID, "pid": c.PID}
	if err != nil {
		code := control.CodeOf(err)
		if code == "" {
			code = control.CodeFailed
		}
		details["code"], details["error"] = code, err.Error()
		outcome = audit.OutcomeFailure
		if code == control.CodeDenied {
			outcome = audit.OutcomeDenied
		}
	}
	d.record(ControlRequest, fmt.Sprintf("uid:%d", c.UID), op, outcome, details)
}

// trustChanged records a trust level change.
func (d *Daemon) trustChanged(c reputation.Change) {
	d.record(audit.TrustChanged, "agent", c.Peer.String(), audit.OutcomeInfo, map[string]any{
		"from": string(c.From), "to": string(c.To), "reason": fmt.Sprintf("score %.3f", c.Score), "manual": c.Manual})
	for l, n := range d.rep.CountByLevel() {
		d.metrics.SetPeers(string(l), n)
	}
}

// sessionFailed accounts for a session that a verified peer ended with a protocol failure: replays and
// stale or reordered messages go to the replay metric and the audit log; any protocol error counts
// against the peer's reputation.
func (d *Daemon) sessionFailed(peer, transport string, err error) {
	code := reason.Of(err)
	switch code {
	case "", reason.Closed, reason.PeerAlert, reason.Timeout, reason.TruncatedFrame, reason.SessionExpired, reason.Internal:
		return // an orderly close, the network, or this side: not the peer's fault
	}
	d.metrics.OperationFailed(metrics.OpEnvelope) // a peer's message refused (issue 17)
	switch code {
	case reason.ReplayedMessage, reason.StaleTimestamp, reason.FutureTimestamp, reason.CounterReuse, reason.ReplayCacheFull:
		d.metrics.ReplayRefused(string(code))
		d.record(audit.ReplayRefused, peer, peer, audit.OutcomeDenied, map[string]any{"reason": string(code), "transport": transport, "error": err.Error()})
	}
	if id, perr := parseID(peer); perr == nil {
		if rerr := d.rep.Record(context.Background(), reputation.Observation{Peer: id, Kind: reputation.ProtocolError}); rerr != nil {
			d.log.Debug("reputation not recorded", "peer", peer, "err", rerr)
		}
	}
}
