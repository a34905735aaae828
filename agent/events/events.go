// Package events turns what happens in the running agent into audit records, metrics and reputation
// observations: handshakes and their refusals, sessions a peer ended with a protocol failure,
// connections the transport host refused, plugin restarts, the task protocol's events, control-socket
// requests, trust level changes, key events and delegations. The daemon builds one Recorder and hands
// its methods to the rooms as their event callbacks; the Recorder holds no part of the daemon.
package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/metrics"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports/host"
)

// Audit event types the agent writes besides audit's own constants.
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
	// TaskTimedOut and TaskCancelled: a submitted task without a result within tasks.timeout (its
	// executor is charged with a failure), or given up by agentctl task cancel (ADR 0090).
	TaskTimedOut  audit.EventType = "task.timed_out"
	TaskCancelled audit.EventType = "task.cancelled"
)

// AuditLog is the audit log (audit.Log).
type AuditLog interface {
	Append(ctx context.Context, r audit.Record) (uint64, error)
}

// Metrics are the counters the events feed (agent/metrics.Metrics).
type Metrics interface {
	AuthSucceeded()
	AuthFailed(reasonCode string)
	OperationFailed(operation string)
	ReplayRefused(reasonCode string)
	PluginRestarted(plugin string)
	PluginSandbox(plugin string, applied map[string]bool)
	SetPeers(level string, n int)
	TaskRefused(code string)
	ControlFailed(operation string)
	IdentityRotated(result string)
	IdentityKeyDestroyed()
}

// Reputation is the trust store (agent/reputation.Store).
type Reputation interface {
	Record(ctx context.Context, obs ...reputation.Observation) error
	CountByLevel() map[reputation.Level]int
}

// Recorder writes the records. Audit, Metrics and Log are required; Reputation, Outbound and
// IsReplicated are set once the daemon has built them (events before that skip what needs them).
type Recorder struct {
	Audit   AuditLog
	Metrics Metrics
	Log     *slog.Logger
	// Reputation receives the observations of results and protocol failures.
	Reputation Reputation
	// Outbound looks up a task this agent submitted (a result's response time).
	Outbound func(taskID string) (*tasks.Outbound, error)
	// IsReplicated reports a task of a replicated group: its result is left to the vote.
	IsReplicated func(taskID string) bool

	pluginMu   sync.Mutex
	pluginLast chan struct{} // done when the last plugin lifecycle record is written (pluginRecord)
}

// Record appends an audit record, logging (never failing the caller) when the log refuses it.
func (r *Recorder) Record(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any) {
	r.recordAt(time.Time{}, typ, actor, subject, outcome, details)
}

// recordAt is Record with the time the event happened (zero: now).
func (r *Recorder) recordAt(at time.Time, typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any) {
	if r == nil || r.Audit == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.Audit.Append(ctx, audit.Record{Type: typ, Actor: actor, Subject: subject, Outcome: outcome, Details: details, Time: at}); err != nil {
		if errors.Is(err, audit.ErrFailed) {
			return // the log reported its failure once; custos_audit_records_lost_total counts each record (ADR 0089)
		}
		r.Log.Error("audit record not written", "type", typ, "err", err)
	}
}

// Session reports a handshake, re-authentication or refusal on a connection of transport from remote.
func (r *Recorder) Session(transport, remote string, ev session.Event) {
	// Re-authentications refused for their rate are audited too: a request refused (reauth_refused, the
	// session goes on) and a re-authentication refused (the session closed with reauth_rate_limited).
	rateLimited := ev.Kind == "reauth_refused" || (ev.Kind == "refused" && reason.Of(ev.Err) == reason.ReauthRateLimited)
	if ev.Kind != "handshake" && ev.Kind != "reauth" && !rateLimited {
		return
	}
	details := map[string]any{"transport": transport, "remote": remote, "role": ev.Role.String(), "kind": ev.Kind}
	if ev.Err == nil {
		r.Metrics.AuthSucceeded()
		r.Record(audit.AuthSuccess, ev.Peer, ev.Peer, audit.OutcomeSuccess, details)
		return
	}
	code := reason.Of(ev.Err)
	r.Metrics.AuthFailed(string(code))
	details["reason"] = string(code)
	details["error"] = ev.Err.Error()
	if rc := authz.RefusalOf(ev.Err); rc != "" {
		details["refusal"] = rc // why the validator refused (blocked, bad_puzzle, grant_expired, geo_denied, ...)
	}
	outcome := audit.OutcomeFailure
	if code == reason.ValidatorRefused || code == reason.ReauthRateLimited {
		outcome = audit.OutcomeDenied
	}
	r.Record(audit.AuthFailure, ev.Peer, ev.Peer, outcome, details)
	if code == reason.KeyLogFork {
		// Two different key events for one generation of the peer's identity: its keys are compromised.
		r.Record(audit.AlertRaised, "agent", ev.Peer, audit.OutcomeFailure, map[string]any{
			"alert": "peer_key_log_fork", "severity": "critical",
			"summary": "the peer's key event log forks from the cached one; the peer is marked compromised and refused from now on",
		})
		r.Log.Error("security alert: peer key event log fork", "peer", ev.Peer, "transport", transport, "remote", remote)
	}
	r.Log.Info("handshake failed", "peer", ev.Peer, "transport", transport, "remote", remote, "role", ev.Role, "reason", code, "err", ev.Err)
}

// SessionFailed accounts for a session that a verified peer ended with a protocol failure: replays and
// stale or reordered messages go to the replay metric and the audit log; any protocol error counts
// against the peer's reputation.
func (r *Recorder) SessionFailed(peer, transport string, err error) {
	code := reason.Of(err)
	switch code {
	case "", reason.Closed, reason.PeerAlert, reason.Timeout, reason.TruncatedFrame, reason.SessionExpired, reason.Internal:
		return // an orderly close, the network, or this side: not the peer's fault
	}
	r.Metrics.OperationFailed(metrics.OpEnvelope) // a peer's message refused
	switch code {
	case reason.ReplayedMessage, reason.StaleTimestamp, reason.FutureTimestamp, reason.CounterReuse, reason.ReplayCacheFull:
		r.Metrics.ReplayRefused(string(code))
		r.Record(audit.ReplayRefused, peer, peer, audit.OutcomeDenied, map[string]any{"reason": string(code), "transport": transport, "error": err.Error()})
	}
	if id, perr := identity.ParseID(peer); perr == nil {
		r.observe(reputation.Observation{Peer: id, Kind: reputation.ProtocolError})
	}
}

func (r *Recorder) observe(obs reputation.Observation) {
	if r.Reputation == nil {
		return
	}
	if err := r.Reputation.Record(context.Background(), obs); err != nil {
		r.Log.Debug("reputation not recorded", "peer", obs.Peer, "err", err)
	}
}

// PeerRefused records a connection the transport host refused before the handshake
// (host.Observer.PeerRefused).
func (r *Recorder) PeerRefused(transport, remote string, err error) {
	code := host.RefusalCode(err)
	r.Metrics.AuthFailed(code)
	go r.Record(audit.AuthFailure, "", "", audit.OutcomeFailure, map[string]any{"transport": transport, "remote": remote, "reason": code, "error": err.Error()})
}

// Plugin describes a transport's plugin for the record of its restart.
type Plugin struct {
	Path, SHA256 string
	Sandbox      map[string]bool // each protection: applied or not (the metric)
	SandboxText  string          // the protections as text (the audit record)
}

// PluginCrashed records a transport's plugin found dead (host.Observer.PluginCrashed), when it happens:
// plugin.crashed with the time the supervisor found it dead, the dead PID and the cause, whether or not a
// restart follows (a restart refused for a checksum mismatch never does).
func (r *Recorder) PluginCrashed(ev host.CrashEvent) {
	cause := ""
	if ev.Cause != nil {
		cause = ev.Cause.Error()
	}
	r.pluginRecord(func() {
		r.recordAt(ev.At, audit.PluginCrashed, "agent", ev.Transport, audit.OutcomeFailure, map[string]any{"error": cause, "pid": ev.PID})
	})
}

// PluginStartFailed records a failed launch during a plugin's restart (host.Observer.PluginStartFailed),
// each time: plugin.start_failed with reason checksum_mismatch (the file is not the pinned one: never run)
// or start_failed.
func (r *Recorder) PluginStartFailed(f host.StartFailure) {
	why := "start_failed"
	if errors.Is(f.Err, host.ErrChecksum) {
		why = "checksum_mismatch"
	}
	msg := ""
	if f.Err != nil {
		msg = f.Err.Error()
	}
	r.pluginRecord(func() {
		r.Record(audit.PluginStartFailed, "agent", f.Transport, audit.OutcomeFailure, map[string]any{"path": f.Path, "attempt": f.Attempt, "reason": why, "error": msg})
	})
}

// PluginRestarted records a restart of a transport's plugin (host.Observer.PluginRestarted); plugin,
// called outside the supervisor's callback, describes it (nil when the transport is not known). The crash
// it follows was recorded when it happened (PluginCrashed).
func (r *Recorder) PluginRestarted(ev host.RestartEvent, plugin func() *Plugin) {
	if ev.Updated { // a requested binary update, not a crash: plugin.updated, and no restart counted
		r.pluginRecord(func() {
			details := map[string]any{"path": ev.Path, "sha256": ev.SHA256, "previous_sha256": ev.PreviousSHA256, "pid": ev.PID,
				"downtime_ms": ev.Downtime.Milliseconds()}
			if p := plugin(); p != nil {
				details["sandbox"] = p.SandboxText
				r.Metrics.PluginSandbox(ev.Transport, p.Sandbox)
			}
			r.Record(audit.PluginUpdated, "agent", ev.Transport, audit.OutcomeSuccess, details)
			r.Log.Info("transport plugin updated", "transport", ev.Transport, "pid", ev.PID, "sha256", ev.SHA256, "previous_sha256", ev.PreviousSHA256, "downtime", ev.Downtime)
		})
		return
	}
	r.Metrics.PluginRestarted(ev.Transport)
	r.pluginRecord(func() {
		cause := ""
		if ev.Cause != nil {
			cause = ev.Cause.Error()
		}
		details := map[string]any{"attempt": ev.Restarts, "pid": ev.PID, "downtime_ms": ev.Downtime.Milliseconds(), "error": cause}
		if p := plugin(); p != nil {
			details["path"], details["sha256"] = p.Path, p.SHA256
			details["sandbox"] = p.SandboxText
			r.Metrics.PluginSandbox(ev.Transport, p.Sandbox)
		}
		r.Record(audit.PluginRestarted, "agent", ev.Transport, audit.OutcomeSuccess, details)
		r.Log.Warn("transport plugin restarted", "transport", ev.Transport, "restarts", ev.Restarts, "pid", ev.PID, "downtime", ev.Downtime, "cause", cause)
	})
}

// pluginRecord writes a plugin lifecycle record off the supervisor's goroutine (an Observer must not
// block), in the order the events came: a restart's record never lands before its crash's.
func (r *Recorder) pluginRecord(write func()) {
	r.pluginMu.Lock()
	prev := r.pluginLast
	done := make(chan struct{})
	r.pluginLast = done
	r.pluginMu.Unlock()
	go func() {
		defer close(done)
		if prev != nil {
			<-prev
		}
		write()
	}()
}

// Task records the task protocol's events (tasks.Config.OnEvent).
func (r *Recorder) Task(ev tasks.Event) {
	if ev.Kind == "refused" {
		r.Metrics.TaskRefused(ev.Status)
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
			r.Metrics.OperationFailed("task")
		}
	case "result":
		typ = TaskResult
		r.observeResult(ev)
		r.observeServed(ev)
	case "timed_out":
		typ, outcome = TaskTimedOut, audit.OutcomeFailure
		r.Metrics.OperationFailed("task")
		r.observeTimeout(ev)
	case "cancelled":
		typ = TaskCancelled
	case "refused", "failed":
		typ, outcome = TaskRefused, audit.OutcomeDenied
	case "result_invalid":
		typ, outcome = TaskResultInvalid, audit.OutcomeFailure
		r.observeResult(ev)
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
	if ev.OnBehalfOf != "" {
		details["on_behalf_of"] = ev.OnBehalfOf // the client the submitter acts for (ADR 0100)
	}
	r.Record(typ, ev.Peer, ev.TaskID, outcome, details)
}

// observeResult feeds a verified (or refused) result into the executor's reputation, with the response
// time of a completed task. The results of a replicated task are left to its vote.
func (r *Recorder) observeResult(ev tasks.Event) {
	id, err := identity.ParseID(ev.Peer)
	if err != nil || (r.IsReplicated != nil && r.IsReplicated(ev.TaskID)) {
		return
	}
	obs := reputation.Observation{Peer: id, Kind: reputation.Completed}
	switch {
	case ev.Kind == "result_invalid":
		obs.Kind = reputation.ProtocolError
	case ev.Status != tasks.ResultOK:
		obs.Kind = reputation.Failed
	default:
		if r.Outbound != nil {
			if o, err := r.Outbound(ev.TaskID); err == nil && o.Updated.After(o.Submitted) {
				obs.ResponseTime = o.Updated.Sub(o.Submitted)
			}
		}
	}
	r.observe(obs)
}

// observeServed records the resources an executor spent on a verified result of a task this agent
// submitted (reputation.Contributed): the seconds it ran plus the MiB of input and output.
func (r *Recorder) observeServed(ev tasks.Event) {
	id, err := identity.ParseID(ev.Peer)
	if err != nil || ev.Served == nil {
		return
	}
	units := ev.Served.Seconds + float64(ev.Served.Bytes)/(1<<20)
	if units > 0 {
		r.observe(reputation.Observation{Peer: id, Kind: reputation.Contributed, Units: units})
	}
}

// observeTimeout charges the executor of a task that got no result within tasks.timeout with a failure,
// when the task reached it (a task never sent, the peer never connected, says nothing of its work). The
// runs of a replicated task are left to its vote.
func (r *Recorder) observeTimeout(ev tasks.Event) {
	id, err := identity.ParseID(ev.Peer)
	if err != nil || (r.IsReplicated != nil && r.IsReplicated(ev.TaskID)) || r.Outbound == nil {
		return
	}
	if o, err := r.Outbound(ev.TaskID); err != nil || o.Attempts == 0 {
		return
	}
	r.observe(reputation.Observation{Peer: id, Kind: reputation.Failed})
}

// ControlRequest records a control-socket request with the caller's kernel-reported identity
// (control.Config.OnRequest).
func (r *Recorder) ControlRequest(c rbac.Cred, op string, err error) {
	outcome, details := audit.OutcomeSuccess, map[string]any{"uid": c.UID, "gid": c.GID, "pid": c.PID}
	if err != nil {
		r.Metrics.ControlFailed(op)
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
	r.Record(ControlRequest, fmt.Sprintf("uid:%d", c.UID), op, outcome, details)
}

// TrustChanged records a trust level change (reputation.Options.OnChange) and the peers per level.
func (r *Recorder) TrustChanged(c reputation.Change) {
	r.Record(audit.TrustChanged, "agent", c.Peer.String(), audit.OutcomeInfo, map[string]any{
		"from": string(c.From), "to": string(c.To), "reason": fmt.Sprintf("score %.3f", c.Score), "manual": c.Manual})
	if c.Expired { // a network block reached its end (ADR 0101)
		r.Record(audit.PeerUnblocked, "agent", c.Peer.String(), audit.OutcomeInfo, map[string]any{"source": "expired"})
	}
	r.CountPeers()
}

// CountPeers sets the peers-per-trust-level gauge.
func (r *Recorder) CountPeers() {
	if r.Reputation == nil {
		return
	}
	for l, n := range r.Reputation.CountByLevel() {
		r.Metrics.SetPeers(string(l), n)
	}
}

// KeyEvents writes the records of custody.KeyEventRecords(before, after) (a rotation, recovery or
// destruction another process made, picked up by the daemon) and returns them.
func (r *Recorder) KeyEvents(before, after []custody.Generation, kel identity.Log, actor string) []audit.Record {
	return r.KeyEventsFrom(before, after, kel, actor, custody.SourceDaemon)
}

// KeyEventsFrom is KeyEvents with the records' source (custody.SourceSchedule for the daemon's own
// rotations and destructions).
func (r *Recorder) KeyEventsFrom(before, after []custody.Generation, kel identity.Log, actor, source string) []audit.Record {
	recs := custody.KeyEventRecords(before, after, kel, actor, source)
	for _, rec := range recs {
		r.Record(rec.Type, rec.Actor, rec.Subject, rec.Outcome, rec.Details)
		r.Log.Info("key event recorded", "type", rec.Type, "generation", rec.Details["generation"])
	}
	return recs
}

// ScheduledRotation accounts for a rotation of the identity key by the daemon's schedule
// (custody.Schedule.OnRotate): a success is counted (its key.rotate record is written by KeyEventsFrom);
// a failure is counted and recorded as key.rotate with outcome failure, source schedule and the error.
func (r *Recorder) ScheduledRotation(agent string, generation uint64, err error) {
	if err == nil {
		r.Metrics.IdentityRotated(metrics.ResultSuccess)
		return
	}
	r.Metrics.IdentityRotated(metrics.ResultFailure)
	r.Record(audit.KeyRotate, agent, agent, audit.OutcomeFailure, map[string]any{
		"generation": generation, "source": custody.SourceSchedule, "error": err.Error(),
	})
}

// ScheduledDestroy counts a retired key the daemon destroyed at the end of its grace period
// (custody.Schedule.OnDestroy; its key.destroy record is written by KeyEventsFrom).
func (r *Recorder) ScheduledDestroy(custody.Generation) { r.Metrics.IdentityKeyDestroyed() }

// DelegationIssued records every delegation the identity key signs (delegation.Config.OnIssue).
func (r *Recorder) DelegationIssued(dl *delegation.Delegation) {
	r.Record(audit.KeyDelegate, dl.AgentID, dl.AgentID, audit.OutcomeSuccess, map[string]any{
		"generation": dl.Generation, "mode": string(dl.Mode), "operational_key": identity.Base64().EncodeToString(dl.OpKey),
		"not_before": time.Unix(dl.NotBefore, 0).UTC().Format(time.RFC3339),
		"expires":    time.Unix(dl.NotAfter, 0).UTC().Format(time.RFC3339),
	})
}
