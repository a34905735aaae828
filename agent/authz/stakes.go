package authz

import (
	"errors"
	"time"

	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/audit"
)

// StakeInstalled is the audit record of a stake table put in force. Actor: its issuer; Subject: this
// agent; Details: entries, expires.
const StakeInstalled audit.EventType = "stake.installed"

// loadStakes puts the stored stake table in force if it still verifies (administrators may have changed,
// it may have expired: then it is logged and left out).
func (z *Authz) loadStakes() error {
	raw, err := z.deps.Stakes.Load()
	if err != nil {
		return err
	}
	if len(raw) == 0 {
		return nil
	}
	t, err := consensus.DecodeStakeTable(raw)
	if err == nil {
		err = consensus.VerifyStakeTable(t, z.az.Admins(), z.IssuerKey, z.now())
	}
	if err != nil {
		z.log.Warn("the stored stake table is not in force; stake and hybrid votes are refused until a new one is installed", "err", err)
		return nil
	}
	z.mu.Lock()
	z.stakes = &t
	z.mu.Unlock()
	return nil
}

// CurrentStakes returns the stake table in force, checked again (it may have expired, or its issuer may
// no longer be an administrator after a reload).
func (z *Authz) CurrentStakes() (*consensus.StakeTable, error) {
	z.mu.Lock()
	t := z.stakes
	z.mu.Unlock()
	if t == nil {
		return nil, errNoStakes
	}
	if err := consensus.VerifyStakeTable(*t, z.az.Admins(), z.IssuerKey, z.now()); err != nil {
		return nil, err
	}
	return t, nil
}

// InstallStakes verifies t against this agent's administrators, refuses a table older than the stored one
// (consensus.ErrStakeRollback) unless force is set, stores it and puts it in force. A forced rollback is
// audited (details "rollback": true, "replaced_issued").
func (z *Authz) InstallStakes(t consensus.StakeTable, force bool) error {
	if err := consensus.VerifyStakeTable(t, z.az.Admins(), z.IssuerKey, z.now()); err != nil {
		return err
	}
	rollback, replaced, err := z.deps.Stakes.Store(t, force)
	if err != nil {
		return err
	}
	z.mu.Lock()
	z.stakes = &t
	z.mu.Unlock()
	details := map[string]any{"entries": len(t.Stakes), "issued": time.Unix(t.Issued, 0).UTC().Format(time.RFC3339),
		"expires": time.Unix(t.Expires, 0).UTC().Format(time.RFC3339)}
	if rollback {
		details["rollback"], details["replaced_issued"] = true, time.Unix(replaced, 0).UTC().Format(time.RFC3339)
	}
	z.deps.Audit(StakeInstalled, t.Issuer, z.self.String(), audit.OutcomeSuccess, details)
	return nil
}

// IsStakeRefusal reports whether err refuses a stake table for what it is (bad table, rollback) rather
// than for a failure here.
func IsStakeRefusal(err error) bool {
	return errors.Is(err, consensus.ErrStakeTable) || errors.Is(err, consensus.ErrStakeRollback)
}

// HeldRevocation reports whether r revokes a grant this agent holds and is signed by that grant's issuer.
func (z *Authz) HeldRevocation(r rbac.Revocation) bool {
	held, err := z.deps.Held.List()
	if err != nil {
		return false
	}
	for _, g := range held {
		if g.ID != r.Grant || g.Issuer != r.Issuer {
			continue
		}
		return r.VerifySignature(z.IssuerKey) == nil
	}
	return false
}

// HeldGrants returns the grants this agent holds, oldest first.
func (z *Authz) HeldGrants() ([]rbac.Grant, error) { return z.deps.Held.List() }

// Hold stores a grant this agent holds (it is presented from the next handshake this agent starts).
func (z *Authz) Hold(g rbac.Grant) error { return z.deps.Held.Put(g) }

// Drop removes a held grant and reports whether it was held.
func (z *Authz) Drop(id string) (bool, error) { return z.deps.Held.Remove(id) }
