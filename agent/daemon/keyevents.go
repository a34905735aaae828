package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/custos-agent/custos/agent/api"
	"time"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

func (d *Daemon) opIdentityReload(ctx context.Context, c rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	before := d.cust.Current().Generation
	_, recs, err := d.reloadIdentity(ctx, fmt.Sprintf("uid:%d", c.UID))
	if err != nil {
		return nil, control.Errorf(control.CodeFailed, "identity reload: %v", err)
	}
	res := &api.IdentityReloadResult{Generation: d.cust.Current().Generation, PreviousGeneration: before, Changed: len(recs) > 0, Recorded: []string{}}
	for _, r := range recs {
		res.Recorded = append(res.Recorded, string(r.Type))
	}
	return res, nil
}

// recordKeyEvents writes the records of KeyEventRecords(before, now) to the audit log and returns them.
func (d *Daemon) recordKeyEvents(before []custody.Generation, actor string) []audit.Record {
	recs := custody.KeyEventRecords(before, d.cust.Keys(), d.cust.Log(), actor, custody.SourceDaemon)
	for _, r := range recs {
		d.record(r.Type, r.Actor, r.Subject, r.Outcome, r.Details)
		d.log.Info("key event recorded", "type", r.Type, "generation", r.Details["generation"])
	}
	return recs
}

// delegationIssued records every delegation the identity key signs (delegation.Config.OnIssue).
func (d *Daemon) delegationIssued(dl *delegation.Delegation) {
	d.record(audit.KeyDelegate, dl.AgentID, dl.AgentID, audit.OutcomeSuccess, map[string]any{
		"generation": dl.Generation, "mode": string(dl.Mode), "operational_key": identity.Base64().EncodeToString(dl.OpKey),
		"not_before": time.Unix(dl.NotBefore, 0).UTC().Format(time.RFC3339),
		"expires":    time.Unix(dl.NotAfter, 0).UTC().Format(time.RFC3339),
	})
}
