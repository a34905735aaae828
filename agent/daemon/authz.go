package daemon

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/identity"
	"github.com/custos-agent/custos/agent/policy"
	"github.com/custos-agent/custos/agent/puzzle"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
)

// Refusal codes of the handshake validator besides rbac's and policy's reasons (audit auth.failure
// details "refusal"; the handshake itself fails with reason validator_refused).
const (
	RefusalBadPuzzle         = "bad_puzzle"          // the admission puzzle was not solved (or not for this handshake)
	RefusalBlocked           = "blocked"             // the peer's trust level is Blocked
	RefusalMalformedGrants   = "malformed_grants"    // the presented grants do not decode
	RefusalGrantWrongSubject = "grant_wrong_subject" // a presented grant names another agent
)

// Reasons of message refusals besides rbac's and policy's (error_response code, audit, metric).
const (
	// ReasonUncorrelated: an error_response that answers nothing this agent sent to that peer.
	ReasonUncorrelated = "uncorrelated"
)

// refusal is a handshake validator's refusal with its code.
type refusal struct {
	code string
	err  error
}

func (r *refusal) Error() string { return r.code + ": " + r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

func refuse(code string, err error) error { return &refusal{code: code, err: err} }

// refusalOf returns the validator's refusal code in err's chain ("" when there is none).
func refusalOf(err error) string {
	var r *refusal
	if errors.As(err, &r) {
		return r.code
	}
	return ""
}

// controlOps names the rbac operation (and so the permission) of every control-socket operation. An
// operation missing here is refused (deny by default); TestEveryControlOpIsAuthorized keeps it complete.
var controlOps = map[string]rbac.Operation{
	OpStatus:            rbac.CtlStatus,
	OpPeersList:         rbac.CtlPeersList,
	OpPeersConnect:      rbac.CtlPeersConnect,
	OpPeersBlock:        rbac.CtlPeersBlock,
	OpPeersUnblock:      rbac.CtlPeersUnblock,
	OpTaskSubmit:        rbac.CtlTaskSubmit,
	OpTaskReplicate:     rbac.CtlTaskSubmit,
	OpTaskGet:           rbac.CtlTaskResult,
	OpTaskList:          rbac.CtlTaskStatus,
	OpConfigReload:      rbac.CtlConfigReload,
	OpIdentityReload:    rbac.CtlRotate,
	OpGrantIssue:        rbac.CtlGrant,
	OpGrantInstall:      rbac.CtlGrant,
	OpGrantRemove:       rbac.CtlGrant,
	OpGrantsList:        rbac.CtlGrantsList,
	OpRevoke:            rbac.CtlRevoke,
	OpRevocationInstall: rbac.CtlRevoke,
	OpStakeSign:         rbac.CtlStakeSet,
	OpStakeSet:          rbac.CtlStakeSet,
	OpAuditHead:         rbac.CtlAuditVerify,
}

// authz wires agent/rbac, agent/policy, agent/reputation, agent/puzzle and agent/consensus into the
// daemon (docs/authorization.md §7): the handshake validator, the message dispatcher, the control-socket
// check, grants this agent holds, and replicated task submission.
type authz struct {
	d        *Daemon
	az       *rbac.Authorizer
	pol      *policy.Policy
	geo      *policy.GeoDB
	issuer   *puzzle.Issuer
	adm      *puzzle.Admission // nil when puzzles are disabled
	evidence *consensus.EvidenceStore
	own      *ownGrants
	selfUID  uint32
	// send answers a refused message (the manager's Send; tests replace it).
	send func(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error
	now  func() time.Time

	mu         sync.Mutex
	requireLog bool        // authorization.require_admin_log
	enforceRB  bool        // authorization.enforce.grants
	defaults   []rbac.Role // authorization.default_peer_roles
	releases   map[string]func()
	replicated map[string]bool // task IDs of replicated submissions: the vote records their reputation
	stakes     *consensus.StakeTable
	rates      map[string]*auditRate
}

// auditRate bounds the audit records of one kind of denial for one peer (a flood is counted in full by
// the metric, and summarised in the audit log).
type auditRate struct {
	second     int64
	n          int
	suppressed int
}

// maxDenialRecordsPerSecond bounds the audit records per peer and reason per second.
const maxDenialRecordsPerSecond = 20

func newAuthz(ctx context.Context, d *Daemon, cfg *Config) (*authz, error) {
	z := &authz{d: d, selfUID: uint32(os.Getuid()), now: time.Now, releases: map[string]func(){}, replicated: map[string]bool{},
		rates: map[string]*auditRate{}}
	z.send = func(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
		return d.mgr.Send(ctx, peer, t, payload)
	}
	rc, err := cfg.RBACConfig(z.selfUID)
	if err != nil {
		return nil, fmt.Errorf("authorization: %w", err)
	}
	store, err := rbac.NewBoltStore(d.db)
	if err != nil {
		return nil, err
	}
	if z.az, err = rbac.NewAuthorizer(ctx, rc, rbac.Options{Resolve: d.issuerKey, Store: store, Logger: d.log.With("part", "rbac")}); err != nil {
		return nil, fmt.Errorf("authorization: %w", err)
	}
	pc, err := cfg.PolicyConfig()
	if err != nil {
		return nil, err
	}
	if pc.Geo.Database != "" {
		if z.geo, err = policy.OpenGeo(pc.Geo.Database); err != nil {
			return nil, fmt.Errorf("policy.geo.database: %w", err)
		}
	}
	if z.pol, err = policy.New(pc, policy.Options{Geo: z.geo}); err != nil {
		z.close()
		return nil, fmt.Errorf("policy: %w", err)
	}
	if z.issuer, err = puzzle.NewIssuer(puzzle.IssuerOptions{TTL: cfg.Puzzles.TTL}); err != nil {
		z.close()
		return nil, err
	}
	if !cfg.Puzzles.Disabled {
		z.adm = &puzzle.Admission{
			Issuer:   z.issuer,
			Adaptive: puzzle.Adaptive{LoadStart: cfg.Puzzles.LoadStart, BitsPerDoubling: cfg.Puzzles.BitsPerDoubling, MaxBits: cfg.Puzzles.MaxBits},
			BaseBits: func(initiator string) uint8 {
				id, err := identity.ParseID(initiator)
				if err != nil {
					return d.rep.Effects(reputation.New).PuzzleBits
				}
				return d.rep.Effects(d.rep.Level(id)).PuzzleBits
			},
			Load: func() float64 {
				if d.mgr == nil || cap(d.mgr.hsSem) == 0 {
					return 0
				}
				return float64(len(d.mgr.hsSem)) / float64(cap(d.mgr.hsSem))
			},
		}
	}
	if z.evidence, err = consensus.NewEvidenceStore(d.db); err != nil {
		z.close()
		return nil, err
	}
	if z.own, err = newOwnGrants(d.db); err != nil {
		z.close()
		return nil, err
	}
	if err := z.loadAdminLogs(cfg.Authorization.AdminLogs); err != nil {
		z.close()
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if err := z.loadStakes(); err != nil {
		z.close()
		return nil, err
	}
	z.setRuntime(cfg)
	for l, n := range d.rep.CountByLevel() {
		d.metrics.SetPeers(string(l), n)
	}
	return z, nil
}

// setRuntime applies the settings read on every decision.
func (z *authz) setRuntime(cfg *Config) {
	roles, _ := config.ParseRoles(cfg.Authorization.DefaultPeerRoles) // validated
	z.mu.Lock()
	z.requireLog = cfg.Authorization.RequireAdminLog
	z.enforceRB = config.Enforced(cfg.Authorization.Enforce.Grants)
	z.defaults = roles
	z.mu.Unlock()
}

// reload applies a new configuration's authorization and policy sections (SIGHUP). It changes nothing
// when one of them cannot be applied.
func (z *authz) reload(cfg *Config) error {
	rc, err := cfg.RBACConfig(z.selfUID)
	if err != nil {
		return fmt.Errorf("authorization: %w", err)
	}
	pc, err := cfg.PolicyConfig()
	if err != nil {
		return err
	}
	pc.Geo.Database = z.d.config().Policy.Geo.Database // a new database needs a restart
	if err := z.pol.Reload(pc); err != nil {
		return fmt.Errorf("%w: policy: %v", ErrConfig, err)
	}
	if err := z.az.SetConfig(rc); err != nil {
		return fmt.Errorf("%w: authorization: %v", ErrConfig, err)
	}
	if err := z.loadAdminLogs(cfg.Authorization.AdminLogs); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	z.setRuntime(cfg)
	return nil
}

// maxAdminLogFile bounds one authorization.admin_logs file.
const maxAdminLogFile = 4 << 20

// loadAdminLogs merges the key event logs of authorization.admin_logs into the peer cache. Each file must
// hold the verifying log of a configured administrator; the error names the file and what is wrong.
func (z *authz) loadAdminLogs(paths []string) error {
	for i, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("authorization.admin_logs[%d]: %w", i, err)
		}
		raw, err := io.ReadAll(io.LimitReader(f, maxAdminLogFile+1))
		f.Close()
		if err == nil && len(raw) > maxAdminLogFile {
			err = fmt.Errorf("larger than %d bytes", maxAdminLogFile)
		}
		if err == nil && len(raw) > 0 {
			var l identity.Log
			if l, err = identity.DecodeLog(raw); err == nil && len(l.Events) > 0 {
				id, perr := identity.ParseID(l.Events[0].ID)
				switch {
				case perr != nil:
					err = perr
				case !z.az.IsAdmin(id):
					err = fmt.Errorf("the log is of %s, which is not in authorization.admins", id)
				default:
					err = z.learnLog(raw, id.String())
				}
			}
		}
		if err != nil {
			return fmt.Errorf("authorization.admin_logs[%d] (%s): %v", i, p, err)
		}
	}
	return nil
}

func (z *authz) close() {
	if z.geo != nil {
		_ = z.geo.Close()
		z.geo = nil
	}
}

// sweep re-evaluates trust levels against decayed scores every interval, and prunes expired grants.
func (z *authz) sweep(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := z.d.rep.Sweep(ctx); err != nil {
			z.d.log.Warn("reputation sweep", "err", err)
		}
		if n, err := z.az.Prune(ctx); err == nil && n > 0 {
			z.d.log.Info("expired grants pruned", "count", n)
		}
	}
}

// issuerKey returns what this agent knows of the key event log of a grant issuer (or stake table signer,
// feedback giver): its own log for itself, the issuer's cached verified log, or, when no log of the
// issuer is cached, identity.SignedAtOnly (generation 0 only: its ID's key). Signed objects are judged
// against it by identity.State.VerifySignedAt (docs/protocol.md, "Signing-generation validity";
// docs/adr/0049).
func (d *Daemon) issuerKey(id identity.ID) (identity.State, error) {
	if id.Equal(d.id) {
		return d.cust.State(), nil
	}
	st, ok, err := d.peers.State(id.String())
	if err != nil {
		return identity.State{}, err
	}
	if ok {
		return st, nil
	}
	if d.authz != nil {
		d.authz.mu.Lock()
		require := d.authz.requireLog
		d.authz.mu.Unlock()
		if require {
			return identity.State{}, fmt.Errorf("no key event log of %s is held here and authorization.require_admin_log is set: list a copy of its kel.jsonl in authorization.admin_logs, or have a holder present it", id)
		}
	}
	return identity.SignedAtOnly(id), nil
}

// roles returns the roles a peer holds now: its valid grants plus the default peer roles.
func (z *authz) roles(ctx context.Context, id identity.ID) []rbac.Role {
	rs := z.az.Roles(ctx, id)
	z.mu.Lock()
	defaults := z.defaults
	z.mu.Unlock()
	for _, r := range defaults {
		if !slices.Contains(rs, r) {
			rs = append(rs, r)
		}
	}
	return rs
}

func roleNames(rs []rbac.Role) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r)
	}
	return out
}

// authorize is rbac's AuthorizeOp, where the default peer roles also count.
func (z *authz) authorize(ctx context.Context, id identity.ID, op rbac.Operation) error {
	err := z.az.AuthorizeOp(ctx, id, op)
	if err == nil || rbac.ReasonOf(err) == "" {
		return err
	}
	req, rerr := rbac.Required(op)
	if rerr != nil {
		return err
	}
	table := z.az.RolesTable()
	z.mu.Lock()
	defaults := z.defaults
	z.mu.Unlock()
	for _, r := range defaults {
		if table.Has(r, req.Permission) {
			return nil
		}
	}
	return err
}

// puzzler is the session's Puzzler (nil when puzzles are disabled).
func (z *authz) puzzler() session.Puzzler {
	if z.adm == nil {
		return nil
	}
	return z.adm
}

// presentable returns the grants this agent presents in the handshakes it starts (unexpired, not revoked,
// valid under what this agent knows of the issuer's key event log, newest first, at most
// rbac.MaxGrantList), with the key event log of each issuer whose grant names a generation
// above 0 (while the whole fits in rbac.MaxPresentation), encoded; nil when it holds none.
func (z *authz) presentable() []byte {
	gs, err := z.own.list()
	if err != nil {
		z.d.log.Warn("own grants not readable; presenting none", "err", err)
		return nil
	}
	now := z.now().Unix()
	var p rbac.Presentation
	for i := len(gs) - 1; i >= 0 && len(p.Grants) < rbac.MaxGrantList; i-- {
		if gs[i].Expires <= now || z.az.Revoked(gs[i].ID) {
			continue
		}
		// A grant this agent knows to be void (its issuer's log shows the signing generation was lost to a
		// recovery, or it was signed outside its generation) would only make peers refuse the handshake.
		if err := gs[i].VerifySignature(z.d.issuerKey); err != nil {
			z.d.log.Debug("a held grant is not presented: it is not valid under its issuer's key event log", "grant", gs[i].ID, "err", err)
			continue
		}
		p.Grants = append(p.Grants, gs[i])
	}
	if len(p.Grants) == 0 {
		return nil
	}
	out := rbac.EncodePresentation(p)
	seen := map[string]bool{}
	for _, g := range p.Grants {
		if g.Gen == 0 || seen[g.Issuer] {
			continue
		}
		seen[g.Issuer] = true
		l := z.d.issuerLog(g.Issuer)
		if l == nil {
			continue
		}
		q := rbac.Presentation{Grants: p.Grants, Logs: append(slices.Clone(p.Logs), l)}
		if enc := rbac.EncodePresentation(q); len(enc) <= rbac.MaxPresentation {
			p, out = q, enc
		} else {
			z.d.log.Warn("the key event log of a grant's issuer does not fit in the handshake; peers that do not know it refuse the grant",
				"issuer", g.Issuer, "grant", g.ID)
		}
	}
	return out
}

// issuerLog returns the key event log (JSON lines) this agent knows of an issuer (its own, or the cached
// one), or nil.
func (d *Daemon) issuerLog(issuer string) []byte {
	if issuer == d.id.String() {
		l := d.cust.Log()
		return l.Encode()
	}
	l, _, ok, err := d.peers.Log(issuer)
	if err != nil || !ok {
		return nil
	}
	return l.Encode()
}

// learnIssuerLogs merges presented key event logs of configured administrators into the peer cache
// (verified from inception; a fork marks the administrator compromised). Logs of other agents are
// ignored. It returns the first error for the log, and goes on with the others.
func (z *authz) learnIssuerLogs(logs [][]byte) error {
	var first error
	for _, raw := range logs {
		first = cmp.Or(first, z.learnLog(raw, ""))
	}
	return first
}

// learnLog merges one key event log (JSON lines) into the peer cache: the log of issuer when issuer is
// not "", else of any configured administrator (others are ignored). This agent's own log is never taken
// from outside. An empty log is nothing to learn.
func (z *authz) learnLog(raw []byte, issuer string) error {
	if len(raw) == 0 {
		return nil
	}
	if raw[len(raw)-1] != '\n' {
		raw = append(slices.Clip(raw), '\n')
	}
	l, err := identity.DecodeLog(raw)
	if err != nil {
		return err
	}
	if len(l.Events) == 0 {
		return errors.New("empty key event log")
	}
	id, err := identity.ParseID(l.Events[0].ID)
	if err != nil {
		return err
	}
	switch {
	case issuer != "" && id.String() != issuer:
		return fmt.Errorf("the key event log is of %s, the record's issuer is %s", id, issuer)
	case issuer == "" && !z.az.IsAdmin(id), id.Equal(z.d.id):
		return nil
	}
	if _, err := z.d.peers.UpdateLog(id, &l); err != nil {
		return fmt.Errorf("key event log of %s: %w", id, err)
	}
	return nil
}

// validate is the handshake validator (docs/authorization.md §7), cheapest check first: the admission
// puzzle, the peer's trust level, the grants it presents, then the resource policy's connection rules
// (country, time window). A refusal carries its code (refusalOf) for the audit record.
func (z *authz) validate(ctx context.Context, p *session.Peer) error {
	d := z.d
	peer := p.ID.String()
	if p.Role == session.Initiator && z.adm != nil {
		if err := z.adm.Verify(p.Puzzle, p.Binding, p.Solution); err != nil {
			z.countDenial(RefusalBadPuzzle, true)
			return refuse(RefusalBadPuzzle, fmt.Errorf("admission puzzle: %w", err))
		}
	}
	if err := d.rep.Admit(p.ID); err != nil {
		z.countDenial(RefusalBlocked, true)
		return refuse(RefusalBlocked, err)
	}
	if p.Role == session.Initiator && len(p.Grants) > 0 {
		if err := z.acceptGrants(ctx, p); err != nil {
			return err
		}
	}
	dec := z.pol.Connect(ctx, policy.Request{Peer: peer, Roles: z.roles(ctx, p.ID), Addr: remoteIP(p.RemoteAddr)})
	if !dec.Allowed {
		z.countDenial(string(dec.Reason), true)
		return refuse(string(dec.Reason), errors.New(dec.Detail))
	}
	if dec.WouldDeny {
		z.report(peer, string(rbac.OpHandshake), "", string(dec.Reason), dec.Detail, false, map[string]any{"remote": p.RemoteAddr, "country": dec.Country})
	}
	return nil
}

// acceptGrants decodes the grants a peer presents and stores each (rbac.Authorizer.AddGrant verifies
// issuer, signature, revocation and expiry first). A bad grant refuses the handshake unless
// authorization.enforce.grants is false (then it is audited as a would-be denial and ignored).
func (z *authz) acceptGrants(ctx context.Context, p *session.Peer) error {
	peer := p.ID.String()
	z.mu.Lock()
	enforce := z.enforceRB
	z.mu.Unlock()
	fail := func(code string, err error, grant string) error {
		z.countDenial(code, enforce)
		if enforce {
			return refuse(code, err)
		}
		z.report(peer, string(rbac.OpHandshake), "", code, err.Error(), false, map[string]any{"grant": grant})
		return nil
	}
	pres, err := rbac.DecodePresentation(p.Grants)
	if err != nil {
		return fail(RefusalMalformedGrants, err, "")
	}
	if err := z.learnIssuerLogs(pres.Logs); err != nil {
		z.d.log.Info("a presented key event log of an administrator was not taken", "peer", peer, "err", err)
	}
	gs := pres.Grants
	for _, g := range gs {
		if g.Subject != peer {
			if err := fail(RefusalGrantWrongSubject, fmt.Errorf("grant %s is for %s, not for the presenting agent %s", g.ID, g.Subject, peer), g.ID); err != nil {
				return err
			}
			continue
		}
		held := slices.ContainsFunc(z.az.Grants(p.ID), func(h rbac.Grant) bool { return h.ID == g.ID })
		if err := z.az.AddGrant(ctx, g); err != nil {
			code := string(rbac.ReasonOf(err))
			if code == "" {
				code = RefusalMalformedGrants
			}
			if err := fail(code, err, g.ID); err != nil {
				return err
			}
			continue
		}
		if !held {
			z.d.record(audit.GrantAccepted, g.Issuer, peer, audit.OutcomeSuccess, map[string]any{
				"grant": g.ID, "role": string(g.Role), "expires": time.Unix(g.Expires, 0).UTC().Format(time.RFC3339)})
		}
	}
	return nil
}

// remoteIP extracts the IP address of a transport's remote address: host:port, or a /ip4/ or /ip6/
// multiaddr. The zero Addr (geo rules skipped) when there is none.
func remoteIP(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	parts := strings.Split(s, "/")
	if len(parts) >= 3 && parts[0] == "" && (parts[1] == "ip4" || parts[1] == "ip6") {
		if a, err := netip.ParseAddr(parts[2]); err == nil {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// dispatch admits one verified message from a session's peer (RBAC, resource policy, task quota) and
// hands it on: feedback to reputation, task messages to the engine. A refused message is answered with an
// error_response carrying the reason code (when it names a task to answer about), audited and counted.
// Answers to this agent's own requests (task_response, task_progress, task_result, error_response about a
// task this agent sent to that peer, and the acknowledgement of a result it pushed) are authorized by
// that correlation rather than by a role (docs/adr/0023).
func (z *authz) dispatch(ctx context.Context, p *session.Peer, msg *session.Message) error {
	d := z.d
	typ := msg.Envelope.Header.MessageType
	from := p.ID.String()
	taskID := peekTaskID(msg.Payload)
	answer := z.isAnswer(from, typ, taskID, msg.Payload)
	if typ == envelope.ErrorResponse && !answer {
		z.countDenial(ReasonUncorrelated, true)
		z.report(from, string(typ), msg.Envelope.Header.MessageID, ReasonUncorrelated,
			"an error_response that answers no task this agent sent to this peer", true, map[string]any{"task_id": taskID})
		return nil // never answer an error with an error
	}
	if !answer {
		if err := z.authorize(ctx, p.ID, rbac.Operation(typ)); err != nil {
			code := string(rbac.ReasonOf(err))
			if code == "" {
				code = string(rbac.PermissionDenied)
			}
			z.mu.Lock()
			enforce := z.enforceRB
			z.mu.Unlock()
			if enforce {
				return z.refuseMessage(ctx, from, msg, taskID, code, err.Error())
			}
			z.countDenial(code, false)
			z.report(from, string(typ), msg.Envelope.Header.MessageID, code, err.Error(), false, map[string]any{"task_id": taskID})
		}
	}
	req := policy.Request{Peer: from, Roles: z.roles(ctx, p.ID), Multiplier: d.rep.Effects(d.rep.Level(p.ID)).RateMultiplier,
		Addr: remoteIP(p.RemoteAddr), Bytes: int64(len(msg.Payload))}
	dec := z.pol.Admit(ctx, req)
	if !dec.Allowed {
		return z.refuseMessage(ctx, from, msg, taskID, string(dec.Reason), dec.Detail)
	}
	if dec.WouldDeny {
		z.countDenial(string(dec.Reason), false)
		z.report(from, string(typ), msg.Envelope.Header.MessageID, string(dec.Reason), dec.Detail, false, map[string]any{"task_id": taskID})
	}
	switch typ {
	case envelope.Feedback:
		return z.feedback(ctx, from, msg.Payload)
	case envelope.Heartbeat:
		return nil
	case envelope.TaskRequest:
		return z.taskRequest(ctx, from, msg, req, taskID)
	}
	return d.engine.Handle(ctx, from, typ, msg.Payload)
}

// taskRequest reserves one of the requester's concurrent-task slots for a new task (policy.StartTask)
// until the task ends, then hands the request to the engine.
func (z *authz) taskRequest(ctx context.Context, from string, msg *session.Message, req policy.Request, taskID string) error {
	d := z.d
	if tasks.CheckTaskID(taskID) != nil {
		return d.engine.Handle(ctx, from, envelope.TaskRequest, msg.Payload) // malformed: the engine says why
	}
	if in, err := d.taskStore.Inbound(from, taskID); err == nil && in != nil {
		return d.engine.Handle(ctx, from, envelope.TaskRequest, msg.Payload) // a retry: answered from the store
	}
	dec, release := z.pol.StartTask(ctx, req)
	if !dec.Allowed {
		return z.refuseMessage(ctx, from, msg, taskID, string(dec.Reason), dec.Detail)
	}
	if dec.WouldDeny {
		z.countDenial(string(dec.Reason), false)
		z.report(from, string(envelope.TaskRequest), msg.Envelope.Header.MessageID, string(dec.Reason), dec.Detail, false, map[string]any{"task_id": taskID})
	}
	key := from + "\x00" + taskID
	z.mu.Lock()
	if old := z.releases[key]; old != nil {
		old()
	}
	z.releases[key] = release
	z.mu.Unlock()
	err := d.engine.Handle(ctx, from, envelope.TaskRequest, msg.Payload)
	if in, serr := d.taskStore.Inbound(from, taskID); serr != nil || in == nil || in.State == tasks.InDone {
		z.release(from, taskID) // refused, or already finished
	}
	return err
}

// release frees a task's slot (idempotent).
func (z *authz) release(peer, taskID string) {
	key := peer + "\x00" + taskID
	z.mu.Lock()
	rel := z.releases[key]
	delete(z.releases, key)
	z.mu.Unlock()
	if rel != nil {
		rel()
	}
}

// taskEvent follows the task engine: a task that ended frees its slot; the result of a replicated task is
// left to the vote (it records the reputation).
func (z *authz) taskEvent(ev tasks.Event) {
	switch ev.Kind {
	case "finished", "interrupted", "refused":
		z.release(ev.Peer, ev.TaskID)
	}
}

// isReplicated reports whether a submitted task is part of a replicated submission.
func (z *authz) isReplicated(taskID string) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.replicated[taskID]
}

// peekTaskID returns the task_id field of a task message's payload, binary or JSON ("" when there is none).
func peekTaskID(payload []byte) string { return tasks.PeekTaskID(payload) }

// isAnswer reports whether a message answers something this agent sent to that peer: a task it
// submitted to the peer (task_response "accepted", task_progress, task_result, error_response), or a
// result it pushed to the peer as its executor (task_response "result_received").
func (z *authz) isAnswer(peer string, typ envelope.MessageType, taskID string, payload []byte) bool {
	if tasks.CheckTaskID(taskID) != nil {
		return false
	}
	outbound := func() bool {
		o, err := z.d.taskStore.Outbound(taskID)
		return err == nil && o.To == peer
	}
	switch typ {
	case envelope.TaskProgress, envelope.TaskResult, envelope.ErrorResponse:
		return outbound()
	case envelope.TaskResponse:
		var r struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(payload, &r) == nil && r.Status == tasks.StatusResultReceived {
			in, err := z.d.taskStore.Inbound(peer, taskID)
			return err == nil && in != nil
		}
		return outbound()
	}
	return false
}

// feedback counts signed feedback from the peer that signed it (reputation.Store.AddFeedback).
func (z *authz) feedback(ctx context.Context, peer string, payload []byte) error {
	f, err := reputation.DecodeFeedback(payload)
	if err != nil {
		return err
	}
	if f.Giver != peer {
		return fmt.Errorf("feedback signed by %s arrived from %s: only a giver's own feedback is accepted", f.Giver, peer)
	}
	w, err := z.d.rep.AddFeedback(ctx, f)
	if err != nil {
		return err
	}
	z.d.log.Debug("feedback counted", "giver", peer, "subject", f.Subject, "rating", f.Rating, "weight", w)
	return nil
}

// feedbackTask is the reputation store's CheckTask (docs/adr/0051): the feedback's task reference must be
// the subject's signed task_result envelope for the feedback's task, addressed to the giver, and verify
// under the subject's key event log and a delegation of it that this agent holds (envelope.VerifyEvidence:
// the signing-generation rule included). It proves the giver submitted that task to the subject.
func (d *Daemon) feedbackTask(_ context.Context, f *reputation.Feedback) error {
	raw, err := f.RefBytes()
	if err != nil {
		return err
	}
	e, err := envelope.DecodeBinary(raw)
	if err != nil {
		return fmt.Errorf("the task reference is not an envelope: %v", err)
	}
	h := e.Header
	if h.MessageType != envelope.TaskResult || e.Payload.Cipher != envelope.None {
		return fmt.Errorf("the task reference is a %s envelope with cipher %s, not a signed task_result", h.MessageType, e.Payload.Cipher)
	}
	if h.SenderID != f.Subject || h.RecipientID != f.Giver {
		return fmt.Errorf("the task reference is a result from %s to %s, not from the subject to the giver", h.SenderID, h.RecipientID)
	}
	l, _, ok, err := d.peers.Log(f.Subject)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no key event log of the subject %s is cached here: its signed result cannot be checked", f.Subject)
	}
	ds, err := d.peers.Delegations(f.Subject)
	if err != nil {
		return err
	}
	verr := fmt.Errorf("no delegation of the subject %s is cached here: its signed result cannot be checked", f.Subject)
	for _, dl := range ds {
		if verr = envelope.VerifyEvidence(e, &l, dl); verr == nil {
			break
		}
	}
	if verr != nil {
		return fmt.Errorf("the subject's signed result does not verify: %w", verr)
	}
	pt, err := e.Plaintext()
	if err != nil {
		return err
	}
	doc, err := tasks.DecodeResultDoc(pt)
	if err != nil {
		return fmt.Errorf("the task reference's result: %w", err)
	}
	if doc.TaskID != f.Task || doc.Requester != f.Giver {
		return fmt.Errorf("the signed result answers task %s of %s, not task %s of the giver", doc.TaskID, doc.Requester, f.Task)
	}
	return nil
}

// refuseMessage answers a refused message with an error_response naming the reason (when the message
// names a task to answer about), audits and counts it. It returns an error saying so (logged by the
// receive loop).
func (z *authz) refuseMessage(ctx context.Context, from string, msg *session.Message, taskID, code, detail string) error {
	typ := msg.Envelope.Header.MessageType
	z.countDenial(code, true)
	z.report(from, string(typ), msg.Envelope.Header.MessageID, code, detail, true, map[string]any{"task_id": taskID})
	if typ == envelope.ErrorResponse || tasks.CheckTaskID(taskID) != nil {
		return fmt.Errorf("%s refused (%s): %s", typ, code, detail)
	}
	em := &tasks.ErrorMessage{TaskID: taskID, Code: code, Message: clipText(string(typ)+" refused: "+detail, tasks.MaxErrorText)}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := z.send(sctx, from, envelope.ErrorResponse, em.Encode()); err != nil {
		return fmt.Errorf("%s refused (%s); the error_response was not sent: %w", typ, code, err)
	}
	return fmt.Errorf("%s refused (%s): %s", typ, code, detail)
}

func clipText(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// countDenial counts a denial (or, with enforced false, a would-be denial) in the metrics.
func (z *authz) countDenial(code string, enforced bool) {
	z.d.metrics.AccessDenied(code, enforced)
	if !enforced {
		return
	}
	switch code {
	case string(policy.RateLimited):
		z.d.metrics.RateLimited("rate")
	case string(policy.QuotaExceeded):
		z.d.metrics.RateLimited("quota")
	}
}

// report writes the audit record of a denial: ratelimit.exceeded for rate limits and quotas,
// access.denied otherwise; a log-only would-be denial has outcome info and details would_deny. At most
// maxDenialRecordsPerSecond records per peer and reason per second are written; the next record says how
// many were left out ("suppressed").
func (z *authz) report(peer, subject, messageID, code, detail string, enforced bool, extra map[string]any) {
	key := peer + "\x00" + code
	sec := z.now().Unix()
	z.mu.Lock()
	r := z.rates[key]
	if r == nil {
		if len(z.rates) > 10000 {
			clear(z.rates)
		}
		r = &auditRate{}
		z.rates[key] = r
	}
	if r.second != sec {
		r.second, r.n = sec, 0
	}
	r.n++
	if r.n > maxDenialRecordsPerSecond {
		r.suppressed++
		z.mu.Unlock()
		return
	}
	suppressed := r.suppressed
	r.suppressed = 0
	z.mu.Unlock()

	typ := audit.AccessDenied
	details := map[string]any{"reason": code, "error": clipText(detail, 512)}
	switch code {
	case string(policy.RateLimited):
		typ, details["limit"] = audit.RateLimited, "rate"
	case string(policy.QuotaExceeded):
		typ, details["limit"] = audit.RateLimited, "quota"
	}
	if req, err := rbac.Required(rbac.Operation(subject)); err == nil && req.Permission != "" {
		details["permission"] = string(req.Permission)
	}
	if messageID != "" {
		details["message_id"] = messageID
	}
	for k, v := range extra {
		if v != nil && v != "" {
			details[k] = v
		}
	}
	if suppressed > 0 {
		details["suppressed"] = suppressed
	}
	outcome := audit.OutcomeDenied
	if !enforced {
		outcome, details["would_deny"], details["mode"] = audit.OutcomeInfo, true, "log_only"
	}
	z.d.record(typ, peer, subject, outcome, details)
	if enforced {
		z.d.log.Info("refused", "peer", peer, "operation", subject, "reason", code, "detail", detail)
	} else {
		z.d.log.Info("would deny (log-only)", "peer", peer, "operation", subject, "reason", code, "detail", detail)
	}
}

// authorizeLocal is the control socket's check: the caller's kernel credentials map to roles
// (authorization.local), and one of them must carry the permission of the operation (controlOps).
// Options.AuthorizeLocal, when set, must agree too.
func (z *authz) authorizeLocal(ctx context.Context, c rbac.Cred, op string) error {
	rop, ok := controlOps[op]
	var err error
	if !ok {
		err = fmt.Errorf("%w: control operation %q has no entry in the daemon's authorization table", rbac.ErrUnknownOperation, op)
	} else {
		err = z.az.AuthorizeLocal(ctx, c, rop)
	}
	if err != nil {
		code := string(rbac.ReasonOf(err))
		if code == "" {
			code = string(rbac.PermissionDenied)
		}
		z.countDenial(code, true)
		z.report(fmt.Sprintf("uid:%d", c.UID), string(rop), "", code, err.Error(), true, map[string]any{"control_op": op, "uid": c.UID, "gid": c.GID, "pid": c.PID})
		return control.Errorf(control.CodeDenied, "%v", err)
	}
	if z.d.opts.AuthorizeLocal != nil {
		return z.d.opts.AuthorizeLocal(ctx, c, op)
	}
	return nil
}
