package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/custos-agent/custos/agent/api"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
)

func stakeView(t consensus.StakeTable, inForce bool) api.StakeView {
	return api.StakeView{Table: string(t.Encode()), Issuer: t.Issuer, Issued: time.Unix(t.Issued, 0).UTC(), Expires: time.Unix(t.Expires, 0).UTC(),
		Stakes: t.Stakes, InForce: inForce}
}

func (d *Daemon) opStakeSign(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.StakeSignArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	if len(a.Stakes) == 0 {
		return nil, control.Errorf(control.CodeBadRequest, "give at least one --stake AGENT_ID=AMOUNT")
	}
	for _, s := range a.Stakes {
		if _, err := identity.ParseID(s.Agent); err != nil {
			return nil, control.Errorf(control.CodeBadRequest, "--stake %s: %v", s.Agent, err)
		}
	}
	ttl := scaled(a.TTLSeconds, time.Second)
	if a.TTLSeconds == 0 {
		ttl = api.DefaultGrantTTL
	}
	if ttl < time.Second || ttl > api.MaxGrantTTL {
		return nil, control.Errorf(control.CodeBadRequest, "--expires %v is outside 1s..%v", ttl, api.MaxGrantTTL)
	}
	signer, err := d.cust.Signer(ctx)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	t, err := consensus.SignStakeTable(ctx, signer, d.id, a.Stakes, d.authz.Now(), ttl)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	v := stakeView(t, false)
	if d.cust.State().Generation > 0 {
		v.IssuerLog = string(d.issuerLog(d.id.String()))
	}
	if d.authz.RBAC().IsAdmin(d.id) {
		if err := d.authz.InstallStakes(t, false); err != nil {
			return nil, fmt.Errorf("the stake table was signed but not put in force here: %w", err)
		}
		v.InForce = true
	} else {
		v.Warning = fmt.Sprintf("this agent (%s) is not in its own authorization.admins: the table counts only on agents that list it as an administrator", d.id)
	}
	return v, nil
}

func (d *Daemon) opStakeSet(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.StakeSetArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	t, err := consensus.DecodeStakeTable([]byte(strings.TrimSpace(a.Table)))
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	if err := d.authz.LearnLog([]byte(a.IssuerLog), t.Issuer); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "the issuer's key event log given with the stake table: %v", err)
	}
	if err := d.authz.InstallStakes(t, a.Force); err != nil {
		if authz.IsStakeRefusal(err) {
			return nil, control.Errorf(control.CodeBadRequest, "%v", err)
		}
		return nil, err
	}
	return stakeView(t, true), nil
}
