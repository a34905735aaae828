package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// Issuer is the identity key that signs grants, revocations and stake tables, and the state of the key
// event log it signs as (agent/custody.Custody).
type Issuer interface {
	Signer(ctx context.Context) (keystore.Signer, error)
	State() identity.State
}

// ControlDeps are what authorization's control operations need besides Authz.
type ControlDeps struct {
	Issuer Issuer
	// PeerIDs lists the agents whose key event logs are cached (grants.list shows their grants).
	PeerIDs func() ([]string, error)
	// Present starts a fresh handshake with every connected peer, so that it sees the grants this agent
	// holds now (grant.install reports the outcome); nil presents to nobody.
	Present func(ctx context.Context) []api.Presentation
}

// Service is authorization's part of the control API: grants (issue, install, remove, list),
// revocations (issue, install) and the stake table (sign, install). Their permissions: agent/api.Table.
func (z *Authz) Service(c ControlDeps) api.Service {
	d := &controlOps{z: z, ControlDeps: c}
	return api.Handlers{
		api.OpGrantIssue:        d.opGrantIssue,
		api.OpGrantInstall:      d.opGrantInstall,
		api.OpGrantRemove:       d.opGrantRemove,
		api.OpGrantsList:        d.opGrantsList,
		api.OpRevoke:            d.opRevoke,
		api.OpPeersBlockNetwork: d.opBlockNotice,
		api.OpRevocationInstall: d.opRevocationInstall,
		api.OpStakeSign:         d.opStakeSign,
		api.OpStakeSet:          d.opStakeSet,
	}
}

type controlOps struct {
	z *Authz
	ControlDeps
}

func (d *controlOps) present(ctx context.Context) []api.Presentation {
	if d.Present == nil {
		return []api.Presentation{}
	}
	return d.Present(ctx)
}

func grantView(g rbac.Grant, state string) api.GrantView {
	return api.GrantView{Grant: string(g.Encode()), ID: g.ID, Subject: g.Subject, Role: string(g.Role), Issuer: g.Issuer,
		Issued: time.Unix(g.Issued, 0).UTC(), Expires: time.Unix(g.Expires, 0).UTC(), State: state}
}

func (d *controlOps) opGrantIssue(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.GrantIssueArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	subject, err := identity.ParseID(a.Subject)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "--to %q: %v", a.Subject, err)
	}
	role, err := rbac.ParseRole(a.Role)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "--role: %v", err)
	}
	ttl := api.Scaled(a.TTLSeconds, time.Second)
	if a.TTLSeconds == 0 {
		ttl = api.DefaultGrantTTL
	}
	if ttl < time.Second || ttl > api.MaxGrantTTL {
		return nil, control.Errorf(control.CodeBadRequest, "--expires %v is outside 1s..%v", ttl, api.MaxGrantTTL)
	}
	signer, by, err := d.issuerSigner(ctx)
	if err != nil {
		return nil, err
	}
	g, err := rbac.IssueGrantBy(ctx, signer, by, subject, role, d.z.Now(), ttl)
	if err != nil {
		return nil, err
	}
	res := api.GrantIssueResult{GrantView: grantView(g, "valid"), AdminHere: d.z.RBAC().IsAdmin(d.z.self)}
	if g.Gen > 0 {
		res.IssuerLog = string(d.z.IssuerLog(g.Issuer))
	}
	if res.AdminHere {
		if err := d.z.RBAC().AddGrant(ctx, g); err != nil {
			return nil, fmt.Errorf("the grant was signed but not stored here: %w", err)
		}
	} else {
		res.Warning = fmt.Sprintf("this agent (%s) is not in its own authorization.admins: the grant counts only on agents that list it as an administrator", d.z.self)
	}
	d.z.deps.Audit(audit.GrantIssued, d.z.self.String(), subject.String(), audit.OutcomeSuccess, map[string]any{
		"grant": g.ID, "roles": string(role), "expires": res.Expires.Format(time.RFC3339), "admin_here": res.AdminHere})
	return res, nil
}

func (d *controlOps) opGrantInstall(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.GrantInstallArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	g, err := rbac.DecodeGrant([]byte(strings.TrimSpace(a.Grant)))
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	if g.Subject != d.z.self.String() {
		return nil, control.Errorf(control.CodeBadRequest, "grant %s is for %s; this agent is %s (install it on that agent)", g.ID, g.Subject, d.z.self)
	}
	now := d.z.Now()
	if now.Unix() >= g.Expires {
		return nil, control.Errorf(control.CodeBadRequest, "grant %s expired at %s: ask the administrator for a new one", g.ID, time.Unix(g.Expires, 0).UTC().Format(time.RFC3339))
	}
	if d.z.RBAC().Revoked(g.ID) {
		return nil, control.Errorf(control.CodeBadRequest, "grant %s is revoked", g.ID)
	}
	if err := d.z.LearnLog([]byte(a.IssuerLog), g.Issuer); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "the issuer's key event log given with grant %s: %v", g.ID, err)
	}
	if err := g.VerifySignature(d.z.IssuerKey); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "grant %s does not verify under the key event log of its issuer %s: %v", g.ID, g.Issuer, err)
	}
	if err := d.z.Hold(g); err != nil {
		return nil, err
	}
	d.z.deps.Audit(audit.GrantAccepted, g.Issuer, d.z.self.String(), audit.OutcomeSuccess, map[string]any{
		"grant": g.ID, "role": string(g.Role), "expires": time.Unix(g.Expires, 0).UTC().Format(time.RFC3339), "held": true})
	return api.GrantInstallResult{Grant: grantView(g, "valid"), Presented: d.present(ctx)}, nil
}

func (d *controlOps) opGrantRemove(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.GrantRemoveArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	found, err := d.z.Drop(a.GrantID)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, control.Errorf(control.CodeNotFound, "this agent holds no grant %q (see agentctl grant list)", a.GrantID)
	}
	return struct{}{}, nil
}

func (d *controlOps) opGrantsList(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	z := d.z
	held, err := z.HeldGrants()
	if err != nil {
		return nil, err
	}
	out := api.GrantsList{Held: []api.GrantView{}, Peers: []api.GrantView{}}
	now := z.Now().Unix()
	for _, g := range held {
		state := "valid"
		switch {
		case z.RBAC().Revoked(g.ID):
			state = "revoked"
		case now >= g.Expires:
			state = "expired"
		}
		out.Held = append(out.Held, grantView(g, state))
	}
	ids, err := d.PeerIDs()
	if err != nil {
		return nil, err
	}
	for _, s := range ids {
		id, err := identity.ParseID(s)
		if err != nil {
			continue
		}
		for _, g := range z.RBAC().Grants(id) {
			state := "valid"
			if err := z.RBAC().CheckGrant(ctx, g); err != nil {
				if state = string(rbac.ReasonOf(err)); state == "" {
					state = err.Error()
				}
			}
			out.Peers = append(out.Peers, grantView(g, state))
		}
	}
	return out, nil
}

func (d *controlOps) opRevoke(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.RevokeArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	signer, by, err := d.issuerSigner(ctx)
	if err != nil {
		return nil, err
	}
	r, err := rbac.IssueRevocationBy(ctx, signer, by, a.GrantID, d.z.Now())
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	res := api.RevokeResult{Revocation: string(r.Encode()), GrantID: r.Grant, Issuer: r.Issuer, Issued: time.Unix(r.Issued, 0).UTC()}
	if r.Gen > 0 {
		res.IssuerLog = string(d.z.IssuerLog(r.Issuer))
	}
	if d.z.RBAC().IsAdmin(d.z.self) {
		if err := d.z.RBAC().AddRevocation(ctx, r); err != nil {
			return nil, fmt.Errorf("the revocation was signed but not applied here: %w", err)
		}
		res.AppliedHere = true
	} else {
		res.Warning = fmt.Sprintf("this agent (%s) is not in its own authorization.admins: the revocation counts only on agents that list it as an administrator", d.z.self)
	}
	d.z.deps.Audit(audit.GrantRevoked, d.z.self.String(), r.Grant, audit.OutcomeSuccess, map[string]any{"grant": r.Grant, "reason": "revoked by this agent", "applied_here": res.AppliedHere})
	return res, nil
}

func (d *controlOps) opRevocationInstall(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.RevocationInstallArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	r, err := rbac.DecodeRevocation([]byte(strings.TrimSpace(a.Revocation)))
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	if err := d.z.LearnLog([]byte(a.IssuerLog), r.Issuer); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "the issuer's key event log given with the revocation: %v", err)
	}
	applied := true
	if err := d.z.RBAC().AddRevocation(ctx, r); err != nil {
		// The holder of the grant accepts its issuer's revocation even when it does not list the issuer
		// as one of its own administrators: it stops presenting the grant.
		if !d.z.HeldRevocation(r) {
			if rbac.ReasonOf(err) != "" {
				return nil, control.Errorf(control.CodeBadRequest, "%v", err)
			}
			return nil, err
		}
		applied = false
	}
	removed, err := d.z.Drop(r.Grant)
	if err != nil {
		return nil, err
	}
	d.z.deps.Audit(audit.GrantRevoked, r.Issuer, r.Grant, audit.OutcomeSuccess, map[string]any{"grant": r.Grant, "reason": "revocation installed", "held": removed, "applied": applied})
	return api.RevocationInstallResult{GrantID: r.Grant, Issuer: r.Issuer, RemovedHeld: removed, Applied: applied}, nil
}

// issuerSigner returns the identity key's signer and the generation it signs as (the grant and revocation
// name it: docs/protocol.md, "Signing-generation validity").
func (d *controlOps) issuerSigner(ctx context.Context) (keystore.Signer, rbac.IssuerKey, error) {
	signer, err := d.Issuer.Signer(ctx)
	if err != nil {
		return nil, rbac.IssuerKey{}, fmt.Errorf("identity key: %w", err)
	}
	st := d.Issuer.State()
	if !signer.Public().Equal(st.Current) {
		return nil, rbac.IssuerKey{}, control.Errorf(control.CodeUnavailable, "the identity key changed while signing (a rotation under way?): try again")
	}
	return signer, rbac.IssuerOf(st), nil
}

func stakeView(t consensus.StakeTable, inForce bool) api.StakeView {
	return api.StakeView{Table: string(t.Encode()), Issuer: t.Issuer, Issued: time.Unix(t.Issued, 0).UTC(), Expires: time.Unix(t.Expires, 0).UTC(),
		Stakes: t.Stakes, InForce: inForce}
}

func (d *controlOps) opStakeSign(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
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
	ttl := api.Scaled(a.TTLSeconds, time.Second)
	if a.TTLSeconds == 0 {
		ttl = api.DefaultGrantTTL
	}
	if ttl < time.Second || ttl > api.MaxGrantTTL {
		return nil, control.Errorf(control.CodeBadRequest, "--expires %v is outside 1s..%v", ttl, api.MaxGrantTTL)
	}
	signer, err := d.Issuer.Signer(ctx)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	t, err := consensus.SignStakeTable(ctx, signer, d.z.self, a.Stakes, d.z.Now(), ttl)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	v := stakeView(t, false)
	if d.Issuer.State().Generation > 0 {
		v.IssuerLog = string(d.z.IssuerLog(d.z.self.String()))
	}
	if d.z.RBAC().IsAdmin(d.z.self) {
		if err := d.z.InstallStakes(t, false); err != nil {
			return nil, fmt.Errorf("the stake table was signed but not put in force here: %w", err)
		}
		v.InForce = true
	} else {
		v.Warning = fmt.Sprintf("this agent (%s) is not in its own authorization.admins: the table counts only on agents that list it as an administrator", d.z.self)
	}
	return v, nil
}

func (d *controlOps) opStakeSet(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.StakeSetArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	t, err := consensus.DecodeStakeTable([]byte(strings.TrimSpace(a.Table)))
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	if err := d.z.LearnLog([]byte(a.IssuerLog), t.Issuer); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "the issuer's key event log given with the stake table: %v", err)
	}
	if err := d.z.InstallStakes(t, a.Force); err != nil {
		if IsStakeRefusal(err) {
			return nil, control.Errorf(control.CodeBadRequest, "%v", err)
		}
		return nil, err
	}
	return stakeView(t, true), nil
}
