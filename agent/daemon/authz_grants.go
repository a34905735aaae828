package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/identity"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
)

// Control operations of grants, revocations and blocking (docs/authorization.md §8).
const (
	OpGrantIssue        = "grant.issue"        // GrantIssueArgs -> GrantIssueResult (this agent signs, as an administrator)
	OpGrantInstall      = "grant.install"      // GrantInstallArgs -> GrantInstallResult (a grant this agent holds)
	OpGrantRemove       = "grant.remove"       // GrantRemoveArgs -> {} (stop presenting a held grant)
	OpGrantsList        = "grants.list"        // {} -> GrantsList
	OpRevoke            = "grant.revoke"       // RevokeArgs -> RevokeResult (this agent signs, as an administrator)
	OpRevocationInstall = "revocation.install" // RevocationInstallArgs -> RevocationInstallResult
	OpPeersBlock        = "peers.block"        // PeerArgs -> reputation.Report
	OpPeersUnblock      = "peers.unblock"      // PeerArgs -> reputation.Report
)

// DefaultGrantTTL is the lifetime of a grant when none is given.
const DefaultGrantTTL = 30 * 24 * time.Hour

// MaxGrantTTL bounds a grant's lifetime.
const MaxGrantTTL = 5 * 365 * 24 * time.Hour

// GrantView is a grant as the control API shows it.
type GrantView struct {
	// Grant is the encoded grant: what agentctl grant install takes.
	Grant   string    `json:"grant"`
	ID      string    `json:"id"`
	Subject string    `json:"subject"`
	Role    string    `json:"role"`
	Issuer  string    `json:"issuer"`
	Issued  time.Time `json:"issued"`
	Expires time.Time `json:"expires"`
	// State is how this agent judges it now: valid, expired, revoked, or (for grants peers presented)
	// the rbac denial reason.
	State string `json:"state"`
}

func grantView(g rbac.Grant, state string) GrantView {
	return GrantView{Grant: string(g.Encode()), ID: g.ID, Subject: g.Subject, Role: string(g.Role), Issuer: g.Issuer,
		Issued: time.Unix(g.Issued, 0).UTC(), Expires: time.Unix(g.Expires, 0).UTC(), State: state}
}

// GrantIssueArgs are OpGrantIssue's arguments.
type GrantIssueArgs struct {
	Subject    string `json:"subject"`
	Role       string `json:"role"`
	TTLSeconds int64  `json:"ttl_seconds,omitempty"` // 0: DefaultGrantTTL
}

// GrantIssueResult is the grant this agent signed.
type GrantIssueResult struct {
	GrantView
	// AdminHere says whether this agent is one of its own configured administrators (then the grant is
	// also in force here); Warning says what that means otherwise.
	AdminHere bool   `json:"admin_here"`
	Warning   string `json:"warning,omitempty"`
	// IssuerLog is this agent's key event log (JSON lines) when the grant names a generation above 0: what
	// a verifier that never met this agent needs to check it (agentctl grant --out writes it after the grant).
	IssuerLog string `json:"issuer_log,omitempty"`
}

func (d *Daemon) opGrantIssue(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a GrantIssueArgs
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
		ttl = DefaultGrantTTL
	}
	if ttl < time.Second || ttl > MaxGrantTTL {
		return nil, control.Errorf(control.CodeBadRequest, "--expires %v is outside 1s..%v", ttl, MaxGrantTTL)
	}
	signer, by, err := d.issuerSigner(ctx)
	if err != nil {
		return nil, err
	}
	g, err := rbac.IssueGrantBy(ctx, signer, by, subject, role, d.authz.Now(), ttl)
	if err != nil {
		return nil, err
	}
	res := GrantIssueResult{GrantView: grantView(g, "valid"), AdminHere: d.authz.RBAC().IsAdmin(d.id)}
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

// GrantInstallArgs are OpGrantInstall's arguments.
type GrantInstallArgs struct {
	Grant string `json:"grant"` // the encoded grant
	// IssuerLog is the issuer's key event log (JSON lines), when the grant file carries it: merged into the
	// peer cache (verified, fork-checked) before the grant is checked.
	IssuerLog string `json:"issuer_log,omitempty"`
}

// Presentation says whether an installed grant reached a connected peer (a fresh handshake started by
// this agent carries it).
type Presentation struct {
	Peer      string `json:"peer"`
	Presented bool   `json:"presented"`
	Transport string `json:"transport,omitempty"`
	Address   string `json:"address,omitempty"`
	Error     string `json:"error,omitempty"`
}

// GrantInstallResult is an installed grant and where it was presented.
type GrantInstallResult struct {
	Grant     GrantView      `json:"grant"`
	Presented []Presentation `json:"presented"`
}

func (d *Daemon) opGrantInstall(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a GrantInstallArgs
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
	return GrantInstallResult{Grant: grantView(g, "valid"), Presented: d.presentAll(ctx)}, nil
}

// presentAll starts a fresh handshake with every connected peer whose address is known, so that it sees
// the grants this agent holds now (grants travel from initiator to responder). A peer that only ever
// dialled this agent sees them at the next handshake this agent starts.
func (d *Daemon) presentAll(ctx context.Context) []Presentation {
	targets := d.mgr.targetStatuses()
	out := []Presentation{}
	for _, s := range d.mgr.statuses() {
		t, ok := targets[s.Peer]
		if !ok || len(t.Addresses) == 0 {
			out = append(out, Presentation{Peer: s.Peer, Error: "no address of this peer is known (it dialled this agent): it sees the grant at the next handshake this agent starts"})
			continue
		}
		id, err := identity.ParseID(s.Peer)
		if err != nil {
			continue
		}
		p := Presentation{Peer: s.Peer}
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

// GrantRemoveArgs are OpGrantRemove's arguments.
type GrantRemoveArgs struct {
	GrantID string `json:"grant_id"`
}

func (d *Daemon) opGrantRemove(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a GrantRemoveArgs
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

// GrantsList is OpGrantsList's answer: the grants this agent holds and presents, and those its peers
// presented to it.
type GrantsList struct {
	Held  []GrantView `json:"held"`
	Peers []GrantView `json:"peers"`
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
	out := GrantsList{Held: []GrantView{}, Peers: []GrantView{}}
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

// RevokeArgs are OpRevoke's arguments.
type RevokeArgs struct {
	GrantID string `json:"grant_id"`
}

// RevokeResult is the revocation this agent signed.
type RevokeResult struct {
	// Revocation is the encoded revocation: what agentctl revoke install takes on the other agents.
	Revocation string    `json:"revocation"`
	GrantID    string    `json:"grant_id"`
	Issuer     string    `json:"issuer"`
	Issued     time.Time `json:"issued"`
	// AppliedHere says whether this agent, as one of its own administrators, applied it at once.
	AppliedHere bool   `json:"applied_here"`
	Warning     string `json:"warning,omitempty"`
	IssuerLog   string `json:"issuer_log,omitempty"` // as GrantIssueResult.IssuerLog
}

func (d *Daemon) opRevoke(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a RevokeArgs
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
	res := RevokeResult{Revocation: string(r.Encode()), GrantID: r.Grant, Issuer: r.Issuer, Issued: time.Unix(r.Issued, 0).UTC()}
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

// RevocationInstallArgs are OpRevocationInstall's arguments.
type RevocationInstallArgs struct {
	Revocation string `json:"revocation"`
	IssuerLog  string `json:"issuer_log,omitempty"` // as GrantInstallArgs.IssuerLog
}

// RevocationInstallResult says what an installed revocation did.
type RevocationInstallResult struct {
	GrantID string `json:"grant_id"`
	Issuer  string `json:"issuer"`
	// RemovedHeld is true when the revoked grant was one this agent held (it is no longer presented).
	RemovedHeld bool `json:"removed_held"`
	// Applied is true when this agent lists the issuer as an administrator: the grant gives nothing here
	// from now on (false: only the held grant was dropped).
	Applied bool `json:"applied"`
}

func (d *Daemon) opRevocationInstall(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a RevocationInstallArgs
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
	return RevocationInstallResult{GrantID: r.Grant, Issuer: r.Issuer, RemovedHeld: removed, Applied: applied}, nil
}

// PeerArgs name a peer.
type PeerArgs struct {
	ID string `json:"id"`
}

func (d *Daemon) peerArg(raw json.RawMessage) (identity.ID, error) {
	var a PeerArgs
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

// authzOps are the control operations of authz_*.go.
func (d *Daemon) authzOps() map[string]control.Op {
	return map[string]control.Op{
		OpGrantIssue:        {Fn: d.opGrantIssue, Mutating: true},
		OpGrantInstall:      {Fn: d.opGrantInstall, Mutating: true},
		OpGrantRemove:       {Fn: d.opGrantRemove, Mutating: true},
		OpGrantsList:        {Fn: d.opGrantsList},
		OpRevoke:            {Fn: d.opRevoke, Mutating: true},
		OpRevocationInstall: {Fn: d.opRevocationInstall, Mutating: true},
		OpPeersBlock:        {Fn: d.opPeersBlock, Mutating: true},
		OpPeersUnblock:      {Fn: d.opPeersUnblock, Mutating: true},
		OpTaskReplicate:     {Fn: d.opTaskReplicate, Mutating: true},
		OpStakeSign:         {Fn: d.opStakeSign, Mutating: true},
		OpStakeSet:          {Fn: d.opStakeSet, Mutating: true},
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
