package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/identity"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/audit"
)

// StakeInstalled is the audit record of a stake table put in force. Actor: its issuer; Subject: this
// agent; Details: entries, expires.
const StakeInstalled audit.EventType = "stake.installed"

var (
	bucketStake = []byte("authz/stake-table")
	keyStake    = []byte("current")
)

func stakeView(t consensus.StakeTable, inForce bool) StakeView {
	return StakeView{Table: string(t.Encode()), Issuer: t.Issuer, Issued: time.Unix(t.Issued, 0).UTC(), Expires: time.Unix(t.Expires, 0).UTC(),
		Stakes: t.Stakes, InForce: inForce}
}

// loadStakes puts the stored stake table in force if it still verifies (administrators may have changed,
// it may have expired: then it is logged and left out).
func (z *authz) loadStakes() error {
	var raw []byte
	if err := z.d.db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketStake)
		if err != nil {
			return err
		}
		raw = append([]byte(nil), b.Get(keyStake)...)
		return nil
	}); err != nil {
		return fmt.Errorf("stake table: %w", err)
	}
	if len(raw) == 0 {
		return nil
	}
	t, err := consensus.DecodeStakeTable(raw)
	if err == nil {
		err = consensus.VerifyStakeTable(t, z.az.Admins(), z.d.issuerKey, z.now())
	}
	if err != nil {
		z.d.log.Warn("the stored stake table is not in force; stake and hybrid votes are refused until a new one is installed", "err", err)
		return nil
	}
	z.mu.Lock()
	z.stakes = &t
	z.mu.Unlock()
	return nil
}

// currentStakes returns the stake table in force, checked again (it may have expired, or its issuer may
// no longer be an administrator after a reload).
func (z *authz) currentStakes() (*consensus.StakeTable, error) {
	z.mu.Lock()
	t := z.stakes
	z.mu.Unlock()
	if t == nil {
		return nil, errNoStakes
	}
	if err := consensus.VerifyStakeTable(*t, z.az.Admins(), z.d.issuerKey, z.now()); err != nil {
		return nil, err
	}
	return t, nil
}

// errStakeRollback: the table offered is older than (or as old as, and different from) the stored one.
var errStakeRollback = errors.New("stake table rollback refused")

// installStakes verifies t against this agent's administrators, refuses a table older than the stored one
// (issued in an earlier second; tables of the same second replace each other) unless force is set, stores it and
// puts it in force. A forced rollback is audited (details "rollback": true, "replaced_issued").
func (z *authz) installStakes(t consensus.StakeTable, force bool) error {
	if err := consensus.VerifyStakeTable(t, z.az.Admins(), z.d.issuerKey, z.now()); err != nil {
		return err
	}
	var rollback bool
	var replaced int64
	err := z.d.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketStake)
		if raw := b.Get(keyStake); len(raw) > 0 {
			if old, err := consensus.DecodeStakeTable(raw); err == nil && t.Issued < old.Issued {
				if !force {
					return fmt.Errorf("%w: the table offered was issued at %s, the one stored here at %s (by %s): install a newer table, or force the rollback (agentctl grant stake install --force, audited)",
						errStakeRollback, time.Unix(t.Issued, 0).UTC().Format(time.RFC3339), time.Unix(old.Issued, 0).UTC().Format(time.RFC3339), old.Issuer)
				}
				rollback, replaced = true, old.Issued
			}
		}
		return b.Put(keyStake, t.Encode())
	})
	if errors.Is(err, errStakeRollback) {
		return err
	}
	if err != nil {
		return fmt.Errorf("stake table: %w", err)
	}
	z.mu.Lock()
	z.stakes = &t
	z.mu.Unlock()
	details := map[string]any{"entries": len(t.Stakes), "issued": time.Unix(t.Issued, 0).UTC().Format(time.RFC3339),
		"expires": time.Unix(t.Expires, 0).UTC().Format(time.RFC3339)}
	if rollback {
		details["rollback"], details["replaced_issued"] = true, time.Unix(replaced, 0).UTC().Format(time.RFC3339)
	}
	z.d.record(StakeInstalled, t.Issuer, z.d.id.String(), audit.OutcomeSuccess, details)
	return nil
}

func (d *Daemon) opStakeSign(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a StakeSignArgs
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
		ttl = DefaultGrantTTL
	}
	if ttl < time.Second || ttl > MaxGrantTTL {
		return nil, control.Errorf(control.CodeBadRequest, "--expires %v is outside 1s..%v", ttl, MaxGrantTTL)
	}
	signer, err := d.cust.Signer(ctx)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	t, err := consensus.SignStakeTable(ctx, signer, d.id, a.Stakes, d.authz.now(), ttl)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	v := stakeView(t, false)
	if d.cust.State().Generation > 0 {
		v.IssuerLog = string(d.issuerLog(d.id.String()))
	}
	if d.authz.az.IsAdmin(d.id) {
		if err := d.authz.installStakes(t, false); err != nil {
			return nil, fmt.Errorf("the stake table was signed but not put in force here: %w", err)
		}
		v.InForce = true
	} else {
		v.Warning = fmt.Sprintf("this agent (%s) is not in its own authorization.admins: the table counts only on agents that list it as an administrator", d.id)
	}
	return v, nil
}

func (d *Daemon) opStakeSet(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a StakeSetArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	t, err := consensus.DecodeStakeTable([]byte(strings.TrimSpace(a.Table)))
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	if err := d.authz.learnLog([]byte(a.IssuerLog), t.Issuer); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "the issuer's key event log given with the stake table: %v", err)
	}
	if err := d.authz.installStakes(t, a.Force); err != nil {
		if errors.Is(err, consensus.ErrStakeTable) || errors.Is(err, errStakeRollback) {
			return nil, control.Errorf(control.CodeBadRequest, "%v", err)
		}
		return nil, err
	}
	return stakeView(t, true), nil
}
