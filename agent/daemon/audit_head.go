package daemon

import (
	"context"
	"encoding/json"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
)

func (d *Daemon) opAuditHead(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	return d.audit.Head(ctx)
}
