package authz

import (
	"context"
	"fmt"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
)

// InstallGossipRevocation verifies and applies a revocation received by gossip (ADR 0091) or catch-up
// (ADR 0096; via says which, for the audit record), as `revoke
// install` does, except that every copy is verified completely, even of a grant already revoked here
// (the verdict decides whether the plugin forwards it). A revocation signed by an agent that is neither
// one of this agent's administrators nor the issuer of a grant it holds is of no use here: ignore is
// true (dropped, not forwarded, nobody penalised) and its issuer's key event log is not learnt.
func (z *Authz) InstallGossipRevocation(ctx context.Context, r rbac.Revocation, issuerLog []byte, via string) (ignore bool, err error) {
	issuer, err := identity.ParseID(r.Issuer)
	if err != nil {
		return false, reason.Wrap(reason.Malformed, err, "revocation issuer %q", r.Issuer)
	}
	admin := z.RBAC().IsAdmin(issuer)
	if !admin && !z.holdsGrantOf(r) {
		return true, reason.New(reason.GossipNotForUs, "revocation of grant %s signed by %s, which is not an administrator of this agent", r.Grant, r.Issuer)
	}
	if err := z.LearnLog(issuerLog, r.Issuer); err != nil {
		return false, reason.Wrap(reason.KeyLogInvalid, err, "the issuer's key event log given with the revocation")
	}
	applied := false
	if admin {
		if err := z.RBAC().VerifyRevocation(r); err != nil {
			return false, withCode(err)
		}
		if err := z.RBAC().AddRevocation(ctx, r); err != nil {
			return false, withCode(err)
		}
		applied = true
	} else if !z.HeldRevocation(r) { // verifies the signature under the issuer's key
		return false, reason.New(reason.GrantBadSignature, "revocation of held grant %s: the signature of %s does not verify", r.Grant, r.Issuer)
	}
	removed, err := z.Drop(r.Grant)
	if err != nil {
		return false, fmt.Errorf("drop held grant %s: %w", r.Grant, err)
	}
	z.deps.Audit(audit.GrantRevoked, r.Issuer, r.Grant, audit.OutcomeSuccess, map[string]any{"grant": r.Grant, "reason": "revocation received by " + via, "held": removed, "applied": applied})
	return false, nil
}

// RevocationWanted returns whether a revocation of grant signed by issuer would be of use here and is
// not held yet: issuer is an administrator of this agent or the issuer of a grant it holds (the held
// grants are listed once, when RevocationWanted is called), and the grant is not revoked here. The
// catch-up of revocations asks a peer only for those (ADR 0096).
func (z *Authz) RevocationWanted() func(grant, issuer string) bool {
	held := map[[2]string]bool{}
	if gs, err := z.deps.Held.List(); err == nil {
		for _, g := range gs {
			held[[2]string{g.ID, g.Issuer}] = true
		}
	}
	return func(grant, issuer string) bool {
		if z.RBAC().Revoked(grant) {
			return false
		}
		if held[[2]string{grant, issuer}] {
			return true
		}
		id, err := identity.ParseID(issuer)
		return err == nil && z.RBAC().IsAdmin(id)
	}
}

// SendTo sends a message to a connected peer (Deps.Send), for the catch-up of revocations.
func (z *Authz) SendTo(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
	return z.send(ctx, peer, t, payload)
}

// OnCatchup sets the handler of revocation_sync messages, which the dispatcher hands it once authorized
// (agent/discovery.Service.HandleCatchup, ADR 0096); without one they are refused.
func (z *Authz) OnCatchup(f func(ctx context.Context, peer string, payload []byte) error) {
	z.mu.Lock()
	z.catchup = f
	z.mu.Unlock()
}

func (z *Authz) handleCatchup(ctx context.Context, peer string, payload []byte) error {
	z.mu.Lock()
	f := z.catchup
	z.mu.Unlock()
	if f == nil {
		return reason.New(reason.Unavailable, "this agent runs no catch-up of revocations")
	}
	return f(ctx, peer, payload)
}

// HeldRevocations returns the revocations recorded here, newest first, at most max.
func (z *Authz) HeldRevocations(max int) []rbac.Revocation { return z.RBAC().Revocations(max) }

// HeldRevocationOf returns the revocation of grant recorded here.
func (z *Authz) HeldRevocationOf(grant string) (rbac.Revocation, bool) {
	return z.RBAC().Revocation(grant)
}

// holdsGrantOf reports whether this agent holds the grant r revokes, issued by r's issuer.
func (z *Authz) holdsGrantOf(r rbac.Revocation) bool {
	held, err := z.deps.Held.List()
	if err != nil {
		return false
	}
	for _, g := range held {
		if g.ID == r.Grant && g.Issuer == r.Issuer {
			return true
		}
	}
	return false
}

// withCode gives an rbac denial its registered code (reason.Of), for the gossip verdict's metric label.
func withCode(err error) error {
	if c := rbac.ReasonOf(err); c != "" {
		return reason.Wrap(reason.Code(c), err, "revocation")
	}
	return err
}
