package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

func grantView(g rbac.Grant, state string) api.GrantView {
	return api.GrantView{Grant: string(g.Encode()), ID: g.ID, Subject: g.Subject, Role: string(g.Role), Issuer: g.Issuer,
		Issued: time.Unix(g.Issued, 0).UTC(), Expires: time.Unix(g.Expires, 0).UTC(), State: state}
}

func (d *Daemon) opGrantIssue(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
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
	ttl := scaled(a.TTLSeconds, time.Second)
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
	g, err := rbac.IssueGrantBy(ctx, signer, by, subject, role, d.authz.Now(), ttl)
	if err != nil {
		return nil, err
	}
	res := api.GrantIssueResult{GrantView: grantView(g, "valid"), AdminHere: d.authz.RBAC().IsAdmin(d.id)}
	if g.Gen > 0 {
		res.IssuerLog = string(d.issuerLog(g.Issuer))
	}
	if res.AdminHere {
		if err := d.authz.RBAC().AddGrant(ctx, g); err != nil {
			return nil, fmt.Errorf("the grant was signed but not stored here: %w", err)
		}
	} else {
		res.Warning = fmt.Sprintf("this agent (%s) is not in its own authorization.admins: the grant counts only on agents that list it as an administrator", d.id)
	}
	d.record(audit.GrantIssued, d.id.String(), subject.String(), audit.OutcomeSuccess, map[string]any{
		"grant": g.ID, "roles": string(role), "expires": res.Expires.Format(time.RFC3339), "admin_here": res.AdminHere})
	return res, nil
}

func (d *Daemon) opGrantInstall(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.GrantInstallArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	g, err := rbac.DecodeGrant([]byte(strings.TrimSpace(a.Grant)))
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	if g.Subject != d.id.String() {
		return nil, control.Errorf(control.CodeBadRequest, "grant %s is for %s; this agent is %s (install it on that agent)", g.ID, g.Subject, d.id)
	}
	now := d.authz.Now()
	if now.Unix() >= g.Expires {
		return nil, control.Errorf(control.CodeBadRequest, "grant %s expired at %s: ask the administrator for a new one", g.ID, time.Unix(g.Expires, 0).UTC().Format(time.RFC3339))
	}
	if d.authz.RBAC().Revoked(g.ID) {
		return nil, control.Errorf(control.CodeBadRequest, "grant %s is revoked", g.ID)
	}
	if err := d.authz.LearnLog([]byte(a.IssuerLog), g.Issuer); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "the issuer's key event log given with grant %s: %v", g.ID, err)
	}
	if err := g.VerifySignature(d.issuerKey); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "grant %s does not verify under the key event log of its issuer %s: %v", g.ID, g.Issuer, err)
	}
	if err := d.authz.Hold(g); err != nil {
		return nil, err
	}
	d.record(audit.GrantAccepted, g.Issuer, d.id.String(), audit.OutcomeSuccess, map[string]any{
		"grant": g.ID, "role": string(g.Role), "expires": time.Unix(g.Expires, 0).UTC().Format(time.RFC3339), "held": true})
	return api.GrantInstallResult{Grant: grantView(g, "valid"), Presented: d.presentAll(ctx)}, nil
}

// presentAll starts a fresh handshake with every connected peer whose address is known, so that it sees
// the grants this agent holds now (grants travel from initiator to responder). A peer that only ever
// dialled this agent sees them at the next handshake this agent starts.
func (d *Daemon) presentAll(ctx context.Context) []api.Presentation {
	targets := d.mgr.targetStatuses()
	out := []api.Presentation{}
	for _, s := range d.mgr.statuses() {
		t, ok := targets[s.Peer]
		if !ok || len(t.Addresses) == 0 {
			out = append(out, api.Presentation{Peer: s.Peer, Error: "no address of this peer is known (it dialled this agent): it sees the grant at the next handshake this agent starts"})
			continue
		}
		id, err := identity.ParseID(s.Peer)
		if err != nil {
			continue
		}
		p := api.Presentation{Peer: s.Peer}
		var errs []string
		for _, a := range t.Addresses {
			dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, err := d.mgr.dial(dctx, id, a)
			cancel()
			if err == nil {
				p.Presented, p.Transport, p.Address = true, a.Transport, a.Address
				break
			}
			errs = append(errs, fmt.Sprintf("%s %s: %v", a.Transport, a.Address, err))
		}
		if !p.Presented {
			p.Error = strings.Join(errs, "; ")
		}
		out = append(out, p)
	}
	return out
}

func (d *Daemon) opGrantRemove(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.GrantRemoveArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	found, err := d.authz.Drop(a.GrantID)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, control.Errorf(control.CodeNotFound, "this agent holds no grant %q (see agentctl grant list)", a.GrantID)
	}
	return struct{}{}, nil
}

func (d *Daemon) opGrantsList(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	z := d.authz
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
	ids, err := d.peers.IDs()
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

func (d *Daemon) opRevoke(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.RevokeArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	signer, by, err := d.issuerSigner(ctx)
	if err != nil {
		return nil, err
	}
	r, err := rbac.IssueRevocationBy(ctx, signer, by, a.GrantID, d.authz.Now())
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	res := api.RevokeResult{Revocation: string(r.Encode()), GrantID: r.Grant, Issuer: r.Issuer, Issued: time.Unix(r.Issued, 0).UTC()}
	if r.Gen > 0 {
		res.IssuerLog = string(d.issuerLog(r.Issuer))
	}
	if d.authz.RBAC().IsAdmin(d.id) {
		if err := d.authz.RBAC().AddRevocation(ctx, r); err != nil {
			return nil, fmt.Errorf("the revocation was signed but not applied here: %w", err)
		}
		res.AppliedHere = true
	} else {
		res.Warning = fmt.Sprintf("this agent (%s) is not in its own authorization.admins: the revocation counts only on agents that list it as an administrator", d.id)
	}
	d.record(audit.GrantRevoked, d.id.String(), r.Grant, audit.OutcomeSuccess, map[string]any{"grant": r.Grant, "reason": "revoked by this agent", "applied_here": res.AppliedHere})
	return res, nil
}

func (d *Daemon) opRevocationInstall(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.RevocationInstallArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	r, err := rbac.DecodeRevocation([]byte(strings.TrimSpace(a.Revocation)))
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	if err := d.authz.LearnLog([]byte(a.IssuerLog), r.Issuer); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "the issuer's key event log given with the revocation: %v", err)
	}
	applied := true
	if err := d.authz.RBAC().AddRevocation(ctx, r); err != nil {
		// The holder of the grant accepts its issuer's revocation even when it does not list the issuer
		// as one of its own administrators: it stops presenting the grant.
		if !d.authz.HeldRevocation(r) {
			if rbac.ReasonOf(err) != "" {
				return nil, control.Errorf(control.CodeBadRequest, "%v", err)
			}
			return nil, err
		}
		applied = false
	}
	removed, err := d.authz.Drop(r.Grant)
	if err != nil {
		return nil, err
	}
	d.record(audit.GrantRevoked, r.Issuer, r.Grant, audit.OutcomeSuccess, map[string]any{"grant": r.Grant, "reason": "revocation installed", "held": removed, "applied": applied})
	return api.RevocationInstallResult{GrantID: r.Grant, Issuer: r.Issuer, RemovedHeld: removed, Applied: applied}, nil
}

func (d *Daemon) peerArg(raw json.RawMessage) (identity.ID, error) {
	var a api.PeerArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return identity.ID{}, err
	}
	id, err := identity.ParseID(a.ID)
	if err != nil {
		return identity.ID{}, control.Errorf(control.CodeBadRequest, "peer %q: %v", a.ID, err)
	}
	if id.Equal(d.id) {
		return identity.ID{}, control.Errorf(control.CodeBadRequest, "%s is this agent", id)
	}
	return id, nil
}

// opPeersBlock puts a peer at Blocked (refused at every handshake until unblocked), closes its session
// and stops re-dialling it.
func (d *Daemon) opPeersBlock(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	id, err := d.peerArg(raw)
	if err != nil {
		return nil, err
	}
	if err := d.rep.Block(ctx, id); err != nil {
		return nil, err
	}
	d.mgr.removeTarget(id.String())
	if ps := d.mgr.session(id.String()); ps != nil {
		_ = ps.s.Close()
	}
	return d.rep.Report(id), nil
}

// opPeersUnblock gives a blocked peer a fresh start (level New, evidence forgotten).
func (d *Daemon) opPeersUnblock(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	id, err := d.peerArg(raw)
	if err != nil {
		return nil, err
	}
	if err := d.rep.Unblock(ctx, id); err != nil {
		if d.rep.Level(id) != reputation.Blocked {
			return nil, control.Errorf(control.CodeBadRequest, "%v", err)
		}
		return nil, err
	}
	return d.rep.Report(id), nil
}

// authzOps are the control operations of authz_*.go (their permissions: agent/api.Table).
func (d *Daemon) authzOps() map[string]api.Handler {
	return map[string]api.Handler{
		api.OpGrantIssue:        d.opGrantIssue,
		api.OpGrantInstall:      d.opGrantInstall,
		api.OpGrantRemove:       d.opGrantRemove,
		api.OpGrantsList:        d.opGrantsList,
		api.OpRevoke:            d.opRevoke,
		api.OpRevocationInstall: d.opRevocationInstall,
		api.OpPeersBlock:        d.opPeersBlock,
		api.OpPeersUnblock:      d.opPeersUnblock,
		api.OpTaskReplicate:     d.opTaskReplicate,
		api.OpStakeSign:         d.opStakeSign,
		api.OpStakeSet:          d.opStakeSet,
	}
}

// issuerSigner returns the identity key's signer and the generation it signs as (the grant and revocation
// name it: docs/protocol.md, "Signing-generation validity").
func (d *Daemon) issuerSigner(ctx context.Context) (keystore.Signer, rbac.IssuerKey, error) {
	signer, err := d.cust.Signer(ctx)
	if err != nil {
		return nil, rbac.IssuerKey{}, fmt.Errorf("identity key: %w", err)
	}
	st := d.cust.State()
	if !signer.Public().Equal(st.Current) {
		return nil, rbac.IssuerKey{}, control.Errorf(control.CodeUnavailable, "the identity key changed while signing (a rotation under way?): try again")
	}
	return signer, rbac.IssuerOf(st), nil
}
