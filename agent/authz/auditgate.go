package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/reason"
)

// RefusalAuditUnavailable: the audit log cannot write records and audit.on_failure is refuse; new work
// (a task request, an inbound session, a mutating control operation) waits until it can (ADR 0089).
const RefusalAuditUnavailable = string(reason.AuditUnavailable)

// AuditHealth reports the audit log's write state (audit.Log.Health).
type AuditHealth func() audit.Health

// The audit gate (ADR 0089) is decided here and only here: auditRefusal says whether new work is refused
// now, and the three places that take new work ask it: Validate (inbound sessions), taskRequest (a
// peer's new task) and GuardAudit (the mutating control operations, on the control socket and the HTTP
// gateway alike). Read-only operations (status above all) keep working, so that the operator sees why.
type auditGate struct {
	health AuditHealth // nil: no audit log watched (never refuses)
	refuse bool        // audit.on_failure is refuse
}

// SetAuditHealth makes the gate watch the audit log's write state (the daemon passes audit.Log.Health).
func (z *Authz) SetAuditHealth(h AuditHealth) {
	z.mu.Lock()
	z.audit.health = h
	z.mu.Unlock()
}

func (z *Authz) gate() auditGate {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.audit
}

// auditRefusal returns the refusal of new work while the audit log cannot write and audit.on_failure is
// refuse; nil while it writes, or under continue.
func (z *Authz) auditRefusal() error {
	g := z.gate()
	if g.health == nil || !g.refuse {
		return nil
	}
	h := g.health()
	if h.Writing {
		return nil
	}
	return Refuse(RefusalAuditUnavailable, fmt.Errorf("the audit log cannot write records (%s since %s: %s); "+
		"audit.on_failure is refuse, so no new work is taken until it can (it retries by itself; free space or fix the disk; agentctl status shows the state)",
		h.Cause, h.Since.Format(time.RFC3339), h.Error))
}

// AuditWriting is the audit log's write state for the status (api.Status.AuditWriting).
func (z *Authz) AuditWriting() api.AuditWriting {
	g := z.gate()
	s := api.AuditWriting{Health: audit.Health{Writing: true}, OnFailure: config.AuditContinue}
	if g.refuse {
		s.OnFailure = config.AuditRefuse
	}
	if g.health != nil {
		s.Health = g.health()
	}
	if err := z.auditRefusal(); err != nil {
		s.Refusing, s.Detail = RefusalAuditUnavailable, err.Error()
	}
	return s
}

// GuardAudit wraps the handlers of the mutating control operations (api.Table's Mutating) with the audit
// gate: while it refuses, they answer control.CodeUnavailable with the audit_unavailable reason and do
// nothing. Read-only operations are passed through unchanged.
func (z *Authz) GuardAudit(hs map[string]api.Handler) map[string]api.Handler {
	out := make(map[string]api.Handler, len(hs))
	for name, h := range hs {
		if spec, ok := api.Lookup(name); ok && !spec.Mutating {
			out[name] = h
			continue
		}
		out[name] = func(ctx context.Context, c rbac.Cred, args json.RawMessage) (any, error) {
			if err := z.auditRefusal(); err != nil {
				z.CountDenial(RefusalAuditUnavailable, true)
				return nil, control.Errorf(control.CodeUnavailable, "%v", err)
			}
			return h(ctx, c, args)
		}
	}
	return out
}
