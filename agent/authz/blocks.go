package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
)

// Block notices (ADR 0101): an administrator blocks an agent network-wide until a time. The notice is
// judged like a revocation (issuer an administrator here, signature valid under the issuer's key event
// log, and besides: not expired) and installed as a network block in reputation (issuer and end
// recorded; it ends by itself).

// Notices is what block notices need of reputation (*reputation.Store).
type Notices interface {
	ApplyNotice(ctx context.Context, n reputation.Notice) (bool, error)
	Notices(max int) [][]byte
}

// notices returns reputation as Notices, or nil when it cannot hold them.
func (z *Authz) notices() Notices {
	n, _ := z.deps.Reputation.(Notices)
	return n
}

// OnBlockNotice sets f to be called (in the background, outside any lock) with every block notice this
// agent issues (agentctl peers block --network), to publish it (agent/discovery sets it).
func (z *Authz) OnBlockNotice(f func(n rbac.BlockNotice)) {
	z.mu.Lock()
	z.onBlock = f
	z.mu.Unlock()
}

// HeldBlockNotices returns the block and unblock notices held that have not ended, newest first, at
// most max: what this agent offers in catch-up.
func (z *Authz) HeldBlockNotices(max int) [][]byte {
	n := z.notices()
	if n == nil {
		return nil
	}
	return n.Notices(max)
}

// InstallBlockNotice judges a block notice received by gossip or catch-up (via says which, for the audit
// record) and installs it. As for a revocation (ADR 0091), a notice signed by an agent that is not an
// administrator here is ignored (not forwarded, its publisher not scored down: another agent of the
// mesh may list that administrator); an expired one and a bad signature are rejected. A notice older than the one held about the agent
// is ignored (block_stale); the one held, again, is accepted (it is forwarded).
func (z *Authz) InstallBlockNotice(ctx context.Context, n rbac.BlockNotice, issuerLog []byte, via string) (ignore bool, err error) {
	notices := z.notices()
	if notices == nil {
		return true, reason.New(reason.Unavailable, "this agent keeps no block notices")
	}
	issuer, err := identity.ParseID(n.Issuer)
	if err != nil {
		return false, reason.Wrap(reason.Malformed, err, "block notice issuer %q", n.Issuer)
	}
	if !z.RBAC().IsAdmin(issuer) {
		return true, reason.New(reason.GrantBadIssuer, "block notice of %s signed by %s, which is not an administrator of this agent", n.Agent, n.Issuer)
	}
	if !z.now().Before(n.Expires()) {
		return false, reason.New(reason.BlockExpired, "block notice of %s by %s ended at %s", n.Agent, n.Issuer, n.Expires().UTC().Format(time.RFC3339))
	}
	if err := z.LearnLog(issuerLog, n.Issuer); err != nil {
		return false, reason.Wrap(reason.KeyLogInvalid, err, "the issuer's key event log given with the block notice")
	}
	if err := z.RBAC().VerifyBlockNotice(n, z.now()); err != nil {
		return false, noticeCode(err)
	}
	return z.applyNotice(ctx, notices, n, "remote", via)
}

// applyNotice installs a verified notice and audits it.
func (z *Authz) applyNotice(ctx context.Context, notices Notices, n rbac.BlockNotice, source, via string) (bool, error) {
	agent, err := identity.ParseID(n.Agent)
	if err != nil {
		return false, reason.Wrap(reason.Malformed, err, "block notice agent %q", n.Agent)
	}
	if agent.Equal(z.self) {
		z.log.Warn("an administrator's notice blocks this agent network-wide: its peers that list the administrator refuse it", "issuer", n.Issuer, "action", n.Action, "until", n.Expires().UTC())
		return false, nil
	}
	changed, err := notices.ApplyNotice(ctx, reputation.Notice{Peer: agent, Block: n.Action == rbac.BlockActionBlock, Issuer: n.Issuer,
		Issued: time.Unix(n.Issued, 0), Until: n.Expires(), Raw: n.Encode()})
	switch {
	case errors.Is(err, reputation.ErrStaleNotice):
		return true, err
	case err != nil:
		return false, fmt.Errorf("install block notice of %s: %w", n.Agent, err)
	}
	details := map[string]any{"issuer": n.Issuer, "until": n.Expires().UTC().Format(time.RFC3339), "source": source, "changed": changed}
	if via != "" {
		details["via"] = via
	}
	if n.Reason != "" {
		details["reason"] = n.Reason
	}
	typ := audit.PeerBlocked
	if n.Action == rbac.BlockActionUnblock {
		typ = audit.PeerUnblocked
	}
	z.deps.Audit(typ, n.Issuer, n.Agent, audit.OutcomeSuccess, details)
	return false, nil
}

// noticeCode gives an rbac denial of a notice its registered code.
func noticeCode(err error) error {
	if c := rbac.ReasonOf(err); c != "" {
		return reason.Wrap(reason.Code(c), err, "block notice")
	}
	if errors.Is(err, rbac.ErrMalformed) {
		return reason.Wrap(reason.Malformed, err, "block notice")
	}
	return err
}

// opBlockNotice signs a block (or unblock) notice of an agent as this agent, installs it here when this
// agent is its own administrator, and hands it to the publisher (gossip).
func (d *controlOps) opBlockNotice(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.BlockNoticeArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	z := d.z
	agent, err := identity.ParseID(a.ID)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "peer %q: %v", a.ID, err)
	}
	if agent.Equal(z.self) {
		return nil, control.Errorf(control.CodeBadRequest, "%s is this agent", agent)
	}
	now := z.now()
	until := a.Until
	action := rbac.BlockActionBlock
	if a.Unblock {
		action = rbac.BlockActionUnblock
		if until.IsZero() { // carried as long as a block issued now could last
			until = now.Add(rbac.MaxBlockDuration)
		}
	}
	if !until.After(now) || until.Sub(now) > rbac.MaxBlockDuration {
		return nil, control.Errorf(control.CodeBadRequest, "--until %s: give a time after now and at most %s ahead", until.UTC().Format(time.RFC3339), rbac.MaxBlockDuration)
	}
	signer, by, err := d.issuerSigner(ctx)
	if err != nil {
		return nil, err
	}
	n, err := rbac.IssueBlockNotice(ctx, signer, by, action, agent, now, until, strings.TrimSpace(a.Reason))
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	res := api.BlockNoticeResult{Notice: string(n.Encode()), Agent: n.Agent, Action: n.Action, Issuer: n.Issuer,
		Issued: time.Unix(n.Issued, 0).UTC(), Until: n.Expires().UTC()}
	if z.RBAC().IsAdmin(z.self) {
		if notices := z.notices(); notices != nil {
			if _, err := z.applyNotice(ctx, notices, n, "local", ""); err != nil {
				return nil, fmt.Errorf("the notice was signed but not applied here: %w", err)
			}
			res.AppliedHere = true
		}
	} else {
		res.Warning = fmt.Sprintf("this agent (%s) is not in its own authorization.admins: the notice counts only on agents that list it as an administrator", z.self)
	}
	z.mu.Lock()
	publish := z.onBlock
	z.mu.Unlock()
	if publish != nil {
		publish(n)
		res.Published = true
	}
	return res, nil
}
