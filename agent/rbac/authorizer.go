package rbac

import (
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/signature"
)

// DefaultMaxGrantsPerSubject bounds how many grants one agent may hold at once.
const DefaultMaxGrantsPerSubject = 32

// maxVerified bounds the cache of verified grant signatures (it is emptied when full).
const maxVerified = 8192

// Config is the authorization configuration of an agent.
type Config struct {
	// Roles is the role table; nil means SeedRoles.
	Roles *Roles
	// Admins are the system administrators' agent IDs. Only they can sign grants, revocations and stake
	// tables, and each of them implicitly holds the system_admin role.
	Admins []identity.ID
	// Local maps control-socket callers (unix uid/gid) to roles.
	Local LocalRoles
	// MaxGrantsPerSubject bounds the grants stored for one agent; 0 means DefaultMaxGrantsPerSubject.
	MaxGrantsPerSubject int
}

// Options are the authorizer's collaborators.
type Options struct {
	// Resolve returns an issuer's current verification key; nil means InceptionKey.
	Resolve KeyResolver
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Store persists grants and revocations; nil keeps them in memory only.
	Store Store
	// Logger receives one debug line per decision; nil discards.
	Logger *slog.Logger
}

// Authorizer decides whether an agent may do something. It is safe for concurrent use.
type Authorizer struct {
	resolve KeyResolver
	now     func() time.Time
	store   Store
	log     *slog.Logger

	mu           sync.RWMutex
	cfg          Config
	admins       map[string]identity.ID // cfg.Admins by text form
	grants       map[string][]Grant     // by subject agent ID
	byID         map[string]Grant       // by grant ID
	revoked      map[string]Revocation  // by grant ID
	onRevocation func(Revocation)       // called with each new revocation (OnRevocation)
	vmu          sync.Mutex
	verified     map[[32]byte]struct{} // digests of (grant, issuer key) that verified
}

// NewAuthorizer makes an authorizer and loads what opts.Store holds. A stored record that does not decode
// is an error (naming it); nothing is dropped silently.
func NewAuthorizer(ctx context.Context, cfg Config, opts Options) (*Authorizer, error) {
	a := &Authorizer{
		resolve:  opts.Resolve,
		now:      opts.Now,
		store:    opts.Store,
		log:      opts.Logger,
		grants:   map[string][]Grant{},
		byID:     map[string]Grant{},
		revoked:  map[string]Revocation{},
		verified: map[[32]byte]struct{}{},
	}
	if a.resolve == nil {
		a.resolve = InceptionKey
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if err := a.SetConfig(cfg); err != nil {
		return nil, err
	}
	if a.store != nil {
		gs, rs, err := a.store.Load(ctx)
		if err != nil {
			return nil, err
		}
		for _, r := range rs {
			a.revoked[r.Grant] = r
		}
		for _, g := range gs {
			a.byID[g.ID] = g
			a.grants[g.Subject] = append(a.grants[g.Subject], g)
		}
		for _, held := range a.grants {
			sortGrants(held)
		}
	}
	return a, nil
}

// SetConfig replaces the configuration (on reload). Grants already stored are kept; they are judged
// against the new administrators on their next use.
func (a *Authorizer) SetConfig(cfg Config) error {
	if cfg.Roles == nil {
		cfg.Roles = SeedRoles()
	}
	if cfg.MaxGrantsPerSubject == 0 {
		cfg.MaxGrantsPerSubject = DefaultMaxGrantsPerSubject
	}
	if cfg.MaxGrantsPerSubject < 0 {
		return fmt.Errorf("max grants per subject %d: give a positive number", cfg.MaxGrantsPerSubject)
	}
	for i, id := range cfg.Admins {
		if id.IsZero() {
			return fmt.Errorf("administrator %d is an empty agent ID", i)
		}
	}
	cfg.Admins = slices.Clone(cfg.Admins)
	admins := make(map[string]identity.ID, len(cfg.Admins))
	for _, id := range cfg.Admins {
		admins[id.String()] = id
	}
	a.mu.Lock()
	a.cfg, a.admins = cfg, admins
	a.mu.Unlock()
	return nil
}

// IsAdmin reports whether id is a configured system administrator.
func (a *Authorizer) IsAdmin(id identity.ID) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.isAdmin(id.String())
}

func (a *Authorizer) isAdmin(id string) bool {
	_, ok := a.admins[id]
	return ok
}

// Admins returns the configured administrators.
func (a *Authorizer) Admins() []identity.ID {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return slices.Clone(a.cfg.Admins)
}

// RolesTable returns the role table in force.
func (a *Authorizer) RolesTable() *Roles {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.cfg.Roles
}

// AddGrant verifies g completely (form, administrator issuer, signature, not revoked, not expired) and
// stores it. A grant that fails is refused with a *Denial carrying the reason, and nothing is stored.
// Adding a grant already held stores nothing and returns its judgement now (nil, or why it is unusable).
// The handshake validator calls it for every grant a peer presents; `agentctl grant` calls it for the grant
// it just issued.
func (a *Authorizer) AddGrant(ctx context.Context, g Grant) error {
	if err := g.check(); err != nil {
		return fmt.Errorf("%w: grant: %v", ErrMalformed, err)
	}
	now := a.now()
	a.mu.RLock()
	old, have := a.byID[g.ID]
	a.mu.RUnlock()
	if have {
		if old.Digest() != g.Digest() {
			return fmt.Errorf("%w: grant ID %s is already held with different contents", ErrMalformed, g.ID)
		}
		if d := a.judge(g, now); d != nil {
			return d // held, but no longer usable (revoked, expired, issuer removed)
		}
		return nil
	}
	if d := a.judge(g, now); d != nil {
		return d
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	held := a.grants[g.Subject]
	if len(held) >= a.cfg.MaxGrantsPerSubject {
		held = a.pruneLocked(ctx, g.Subject, now)
		if len(held) >= a.cfg.MaxGrantsPerSubject {
			return fmt.Errorf("agent %s already holds %d grants (the limit): revoke or let some expire first", g.Subject, len(held))
		}
	}
	if a.store != nil {
		if err := a.store.PutGrant(ctx, g); err != nil {
			return fmt.Errorf("store grant %s: %w", g.ID, err)
		}
	}
	a.byID[g.ID] = g
	held = append(held, g)
	sortGrants(held)
	a.grants[g.Subject] = held
	a.log.Debug("grant added", "grant", g.ID, "subject", g.Subject, "role", g.Role, "issuer", g.Issuer, "expires", time.Unix(g.Expires, 0))
	return nil
}

// AddRevocation verifies r (VerifyRevocation) and records it for good. The revoked grant need not be
// known yet: a grant presented later is refused. A revocation of a grant already revoked is not verified
// again; the OnRevocation hook is called for a new one.
func (a *Authorizer) AddRevocation(ctx context.Context, r Revocation) error {
	if err := r.check(); err != nil {
		return fmt.Errorf("%w: revocation: %v", ErrMalformed, err)
	}
	a.mu.RLock()
	_, dup := a.revoked[r.Grant]
	a.mu.RUnlock()
	if dup {
		return nil
	}
	if err := a.VerifyRevocation(r); err != nil {
		return err
	}
	a.mu.Lock()
	if a.store != nil {
		if err := a.store.PutRevocation(ctx, r); err != nil {
			a.mu.Unlock()
			return fmt.Errorf("store revocation of %s: %w", r.Grant, err)
		}
	}
	a.revoked[r.Grant] = r
	hook := a.onRevocation
	a.mu.Unlock()
	a.log.Debug("grant revoked", "grant", r.Grant, "issuer", r.Issuer)
	if hook != nil {
		hook(r)
	}
	return nil
}

// VerifyRevocation checks r completely (form, administrator issuer, signature under
// signature.GrantRevocation) without recording it, even when the grant is already revoked: a node that
// relays a revocation (ADR 0091) verifies every copy it forwards.
func (a *Authorizer) VerifyRevocation(r Revocation) error {
	if err := r.check(); err != nil {
		return fmt.Errorf("%w: revocation: %v", ErrMalformed, err)
	}
	a.mu.RLock()
	admin := a.isAdmin(r.Issuer)
	a.mu.RUnlock()
	if !admin {
		return deny(GrantBadIssuer, r.Issuer, "", r.Grant, "revocation of grant %s is signed by %s, which is not a configured system administrator", r.Grant, r.Issuer)
	}
	if err := a.verifySig(r.Issuer, r.SignedBy(), r.Head, r.Issued, r.SigningInput, r.Sig, nil); err != nil {
		return deny(GrantBadSignature, r.Issuer, "", r.Grant, "revocation of grant %s: %v", r.Grant, err)
	}
	return nil
}

// OnRevocation sets f to be called (outside the authorizer's lock) with every revocation recorded from
// now on, e.g. to publish it to the network (ADR 0091). f must not block.
func (a *Authorizer) OnRevocation(f func(Revocation)) {
	a.mu.Lock()
	a.onRevocation = f
	a.mu.Unlock()
}

// Revoked reports whether grantID has been revoked.
func (a *Authorizer) Revoked(grantID string) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	_, ok := a.revoked[grantID]
	return ok
}

// Revocations returns the recorded revocations, newest first (by issued time, then grant ID), at most
// max of them (max <= 0: all). The catch-up of revocations offers them to peers (ADR 0096).
func (a *Authorizer) Revocations(max int) []Revocation {
	a.mu.RLock()
	out := make([]Revocation, 0, len(a.revoked))
	for _, r := range a.revoked {
		out = append(out, r)
	}
	a.mu.RUnlock()
	slices.SortFunc(out, func(x, y Revocation) int {
		if c := cmp.Compare(y.Issued, x.Issued); c != 0 {
			return c
		}
		return strings.Compare(x.Grant, y.Grant)
	})
	if max > 0 && len(out) > max {
		out = out[:max]
	}
	return out
}

// Revocation returns the recorded revocation of grantID.
func (a *Authorizer) Revocation(grantID string) (Revocation, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	r, ok := a.revoked[grantID]
	return r, ok
}

// Grants returns the grants stored for subject (valid or not), oldest first.
func (a *Authorizer) Grants(subject identity.ID) []Grant {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return slices.Clone(a.grants[subject.String()])
}

// Roles returns the roles subject holds now through valid grants (and system_admin for an administrator),
// in the seed's role order.
func (a *Authorizer) Roles(ctx context.Context, subject identity.ID) []Role {
	now := a.now()
	a.mu.RLock()
	held := slices.Clone(a.grants[subject.String()])
	admin := a.isAdmin(subject.String())
	a.mu.RUnlock()
	set := map[Role]bool{}
	if admin {
		set[SystemAdmin] = true
	}
	for _, g := range held {
		if a.judge(g, now) == nil {
			set[g.Role] = true
		}
	}
	var out []Role
	for _, r := range AllRoles {
		if set[r] {
			out = append(out, r)
		}
	}
	return out
}

// Authorize answers whether subject may use permission p now: nil, or a *Denial whose Reason is
// no_grant (it holds no grant), permission_denied (its valid roles lack p), or — when the only grants whose
// role carries p are unusable — grant_expired, grant_revoked, grant_bad_issuer or grant_bad_signature.
// The message dispatcher calls AuthorizeOp with the message type; this is the same for a permission.
func (a *Authorizer) Authorize(ctx context.Context, subject identity.ID, p Permission) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := ParsePermission(string(p)); err != nil {
		return err
	}
	sub := subject.String()
	a.mu.RLock()
	held := slices.Clone(a.grants[sub])
	admin := a.isAdmin(sub)
	a.mu.RUnlock()
	return a.decide(sub, held, admin, p)
}

// AuthorizeHeld answers whether this agent (self) may do op, a self operation of Table, by the grants
// it holds (agentctl grant install; oldest first), judged by the rules of Authorize: the issuer must be one
// of this agent's administrators, the signature valid under the signing-generation rule, the grant not
// revoked here and not expired. A configured administrator's implicit system_admin counts as in Authorize.
// A peer or control operation is an error (it is not this agent's own act).
func (a *Authorizer) AuthorizeHeld(ctx context.Context, self identity.ID, held []Grant, op Operation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req, err := Required(op)
	if err != nil {
		return err
	}
	if req.From != FromSelf {
		return fmt.Errorf("%w: %s is not a self operation (it is judged on the %s side)", ErrUnknownOperation, op, req.From)
	}
	sub := self.String()
	mine := make([]Grant, 0, len(held))
	for _, g := range held {
		if g.Subject == sub {
			mine = append(mine, g)
		}
	}
	sortGrants(mine)
	a.mu.RLock()
	admin := a.isAdmin(sub)
	a.mu.RUnlock()
	return a.decide(sub, mine, admin, req.Permission)
}

// decide is Authorize over the grants held (oldest first) by sub.
func (a *Authorizer) decide(sub string, held []Grant, admin bool, p Permission) error {
	now := a.now()
	a.mu.RLock()
	roles := a.cfg.Roles
	a.mu.RUnlock()

	if admin && roles.Has(SystemAdmin, p) {
		return nil
	}
	if len(held) == 0 && !admin {
		return a.denied(deny(NoGrant, sub, p, "", "agent %s holds no role grant: ask a system administrator for a grant of %s", sub, rolesHint(roles, p)))
	}
	var first *Denial // the first failure among grants whose role carries p (newest grant first)
	var valid []Role
	if admin {
		valid = append(valid, SystemAdmin)
	}
	for i := len(held) - 1; i >= 0; i-- {
		g := held[i]
		d := a.judge(g, now)
		if d == nil {
			if roles.Has(g.Role, p) {
				return nil
			}
			valid = append(valid, g.Role)
			continue
		}
		if roles.Has(g.Role, p) && first == nil {
			d.Permission = p
			first = d
		}
	}
	if first != nil {
		return a.denied(first)
	}
	if len(valid) == 0 {
		// Every grant is unusable and none would have carried p anyway.
		g := held[len(held)-1]
		d := a.judge(g, now)
		d.Permission = p
		d.Detail += fmt.Sprintf(" (and its role %s would not carry %s)", g.Role, p)
		return a.denied(d)
	}
	return a.denied(deny(PermissionDenied, sub, p, "", "agent %s holds %s, none of which carries %s (roles with it: %s)", sub, joinRoles(uniq(valid)), p, rolesHint(roles, p)))
}

// AuthorizeOp is Authorize for an operation of Table. An operation that needs no role is allowed here (the
// caller does its own checks, see the table's notes); an unknown operation is refused.
func (a *Authorizer) AuthorizeOp(ctx context.Context, subject identity.ID, op Operation) error {
	req, err := Required(op)
	if err != nil {
		return err
	}
	if req.Permission == "" {
		return nil
	}
	return a.Authorize(ctx, subject, req.Permission)
}

// CheckGrant judges one grant now without storing it: nil, or the *Denial AddGrant would return.
func (a *Authorizer) CheckGrant(ctx context.Context, g Grant) error {
	if err := g.check(); err != nil {
		return fmt.Errorf("%w: grant: %v", ErrMalformed, err)
	}
	if d := a.judge(g, a.now()); d != nil {
		return d
	}
	return nil
}

// Prune deletes expired grants from memory and the store, and returns how many went.
func (a *Authorizer) Prune(ctx context.Context) (int, error) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for sub, held := range a.grants {
		before := len(held)
		kept := a.pruneLocked(ctx, sub, now)
		n += before - len(kept)
	}
	return n, nil
}

// pruneLocked drops sub's expired grants; store failures keep the grant (it is retried next time).
func (a *Authorizer) pruneLocked(ctx context.Context, sub string, now time.Time) []Grant {
	held := a.grants[sub]
	kept := held[:0:0]
	for _, g := range held {
		if now.Unix() >= g.Expires {
			if a.store != nil {
				if err := a.store.DeleteGrant(ctx, g.ID); err != nil {
					a.log.Warn("prune grant", "grant", g.ID, "err", err)
					kept = append(kept, g)
					continue
				}
			}
			delete(a.byID, g.ID)
			continue
		}
		kept = append(kept, g)
	}
	if len(kept) == 0 {
		delete(a.grants, sub)
	} else {
		a.grants[sub] = kept
	}
	return kept
}

// judge checks one grant: administrator issuer, signature, revocation, expiry (in that order).
func (a *Authorizer) judge(g Grant, now time.Time) *Denial {
	a.mu.RLock()
	admin := a.isAdmin(g.Issuer)
	rev, revoked := a.revoked[g.ID]
	a.mu.RUnlock()
	if !admin {
		return deny(GrantBadIssuer, g.Subject, "", g.ID, "grant %s (%s) is signed by %s, which is not a configured system administrator", g.ID, g.Role, g.Issuer)
	}
	if err := a.verifySig(g.Issuer, g.SignedBy(), g.Head, g.Issued, g.SigningInput, g.Sig, g.Encode()); err != nil {
		return deny(GrantBadSignature, g.Subject, "", g.ID, "grant %s (%s): %v", g.ID, g.Role, err)
	}
	if revoked {
		return deny(GrantRevoked, g.Subject, "", g.ID, "grant %s (%s) was revoked by %s at %s: ask a system administrator for a new grant", g.ID, g.Role, rev.Issuer, time.Unix(rev.Issued, 0).UTC().Format(time.RFC3339))
	}
	if now.Unix() >= g.Expires {
		return deny(GrantExpired, g.Subject, "", g.ID, "grant %s (%s) expired at %s: ask a system administrator to renew it", g.ID, g.Role, time.Unix(g.Expires, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// verifySig verifies sig over in as signed by issuer at issued (by generation gen, head, when named)
// under the issuer's key event log as this agent knows it (identity.State.VerifySignedAt: a rotation keeps
// what an older generation signed while it was current; a recovery voids what the lost one signed).
// cacheKey (when not nil) lets a signature that verified once under the same log skip verification.
func (a *Authorizer) verifySig(issuer string, gen int64, head string, issued int64, in func() *signature.Input, sig64 string, cacheKey []byte) error {
	id, err := a.issuerID(issuer)
	if err != nil {
		return fmt.Errorf("issuer: %v", err)
	}
	st, err := a.resolve(id)
	if err != nil {
		return fmt.Errorf("cannot verify: the issuer's key event log is unavailable: %v", err)
	}
	var ck [32]byte
	if cacheKey != nil {
		h := sha256.New()
		h.Write(cacheKey)
		h.Write([]byte{0})
		h.Write(st.Head[:])
		h.Write([]byte(st.Current.Algorithm))
		h.Write(st.Current.Bytes())
		h.Sum(ck[:0])
		a.vmu.Lock()
		_, ok := a.verified[ck]
		a.vmu.Unlock()
		if ok {
			return nil
		}
	}
	if err := verifyUnder(&st, gen, head, issued, in, sig64); err != nil {
		return err
	}
	if cacheKey != nil {
		a.vmu.Lock()
		if len(a.verified) >= maxVerified {
			clear(a.verified)
		}
		a.verified[ck] = struct{}{}
		a.vmu.Unlock()
	}
	return nil
}

// verifyUnder is the signature check of grants and revocations under an issuer's key event log.
func verifyUnder(st *identity.State, gen int64, head string, issued int64, in func() *signature.Input, sig64 string) error {
	sig, err := decodeSig(sig64)
	if err != nil {
		return err
	}
	if _, err := st.VerifySignedAt(gen, head, issued, func(pub keystore.PublicKey) error {
		return signature.VerifyInput(pub, in(), sig)
	}); err != nil {
		return fmt.Errorf("not valid under the issuer's key event log: %w", err)
	}
	return nil
}

// VerifySignature checks only the grant's signature under its issuer's key event log as resolve gives it
// (not whether the issuer is an administrator here): what the grant's subject checks before holding it.
func (g *Grant) VerifySignature(resolve KeyResolver) error {
	return verifyWith(resolve, g.Issuer, g.SignedBy(), g.Head, g.Issued, g.SigningInput, g.Sig)
}

// VerifySignature checks only the revocation's signature under its issuer's key event log.
func (r *Revocation) VerifySignature(resolve KeyResolver) error {
	return verifyWith(resolve, r.Issuer, r.SignedBy(), r.Head, r.Issued, r.SigningInput, r.Sig)
}

func verifyWith(resolve KeyResolver, issuer string, gen int64, head string, issued int64, in func() *signature.Input, sig64 string) error {
	id, err := identity.ParseID(issuer)
	if err != nil {
		return fmt.Errorf("issuer: %v", err)
	}
	st, err := resolve(id)
	if err != nil {
		return fmt.Errorf("cannot verify: the issuer's key event log is unavailable: %v", err)
	}
	return verifyUnder(&st, gen, head, issued, in, sig64)
}

// issuerID returns the parsed ID of an administrator without parsing it again (a P-256 ID costs a point
// decompression), or parses it.
func (a *Authorizer) issuerID(s string) (identity.ID, error) {
	a.mu.RLock()
	id, ok := a.admins[s]
	a.mu.RUnlock()
	if ok {
		return id, nil
	}
	return identity.ParseID(s)
}

func (a *Authorizer) denied(d *Denial) error {
	a.log.Debug("access denied", "subject", d.Subject, "permission", d.Permission, "reason", d.Reason, "grant", d.GrantID)
	return d
}

func rolesHint(roles *Roles, p Permission) string {
	rs := roles.RolesWith(p)
	if len(rs) == 0 {
		return "(no role carries " + string(p) + " in the roles file)"
	}
	return joinRoles(rs)
}

func uniq(rs []Role) []Role {
	var out []Role
	for _, r := range AllRoles {
		if slices.Contains(rs, r) {
			out = append(out, r)
		}
	}
	return out
}

// sortGrants orders grants oldest first (by issue time, then ID).
func sortGrants(gs []Grant) {
	slices.SortStableFunc(gs, func(x, y Grant) int {
		if x.Issued != y.Issued {
			return cmp.Compare(x.Issued, y.Issued)
		}
		return strings.Compare(x.ID, y.ID)
	})
}

// EraseSubject deletes every grant about subject, from memory and the store (erasure on request, ADR
// 0092); it returns how many went. Grants the subject issued to others and revocations are kept: they
// are about other agents' authorizations.
func (a *Authorizer) EraseSubject(ctx context.Context, subject identity.ID) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sub := subject.String()
	gone := a.grants[sub]
	for i, g := range gone {
		if a.store != nil {
			if err := a.store.DeleteGrant(ctx, g.ID); err != nil {
				a.grants[sub] = gone[i:]
				return i, fmt.Errorf("rbac: erase grants of %s: %w", sub, err)
			}
		}
		delete(a.byID, g.ID)
	}
	delete(a.grants, sub) // erased
	return len(gone), nil
}
