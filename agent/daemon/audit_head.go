package daemon

import (
	"context"
	"encoding/json"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
)

// OpAuditHead reports the audit log's head: {} -> audit.Head (seq and hash of the last durable record).
// agentctl audit verify asks for it while the daemon runs and then requires the log to hold that head
// (audit.VerifyRunning): holding audit/LOCK no longer makes verification lenient. Permission: that of
// control.audit.verify (manage_security).
const OpAuditHead = "audit.head"

func (d *Daemon) opAuditHead(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	return d.audit.Head(ctx)
}
