// Package authz is the agent's authorization: the handshake validator, the message dispatcher's checks
// (RBAC, resource policy, task quota), the control socket's check, the grants this agent holds and
// presents, the stake table in force, and the audit records and metrics of denials (docs/authorization.md
// §7). It wires agent/rbac, agent/policy, agent/reputation and agent/puzzle together and reaches the rest
// of the agent only through the small interfaces below, so that its tests build it with in-memory fakes.
package authz

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/policy"
	"github.com/custos-agent/custos/agent/puzzle"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

// Self is this agent's own identity: its ID, the state of its key event log and the log itself.
type Self interface {
	ID() identity.ID
	State() identity.State
	Log() identity.Log
}

// PeerStore is the peer cache's verified key event logs (agent/peers.Cache).
type PeerStore interface {
	State(id string) (identity.State, bool, error)
	Log(id string) (identity.Log, identity.State, bool, error)
	UpdateLog(id identity.ID, l *identity.Log) (identity.State, error)
}

// GrantStore keeps the grants this agent holds and presents (agent/rbac.HeldGrants).
type GrantStore interface {
	List() ([]rbac.Grant, error)
	Put(g rbac.Grant) error
	Remove(id string) (bool, error)
}

// StakeStore keeps the stake table in force (agent/consensus.StakeStore).
type StakeStore interface {
	Load() ([]byte, error)
	Store(t consensus.StakeTable, force bool) (rollback bool, replaced int64, err error)
}

// Reputation is the trust store (agent/reputation.Store).
type Reputation interface {
	Admit(peer identity.ID) error
	Level(peer identity.ID) reputation.Level
	Effects(l reputation.Level) reputation.Effects
	AddFeedback(ctx context.Context, f reputation.Feedback) (float64, error)
	Sweep(ctx context.Context) ([]reputation.Change, error)
}

// Tasks is what the dispatcher needs of the task engine and its store.
type Tasks interface {
	// Handle hands a message on to the task engine.
	Handle(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error
	Inbound(requester, id string) (*tasks.Inbound, error)
	Outbound(id string) (*tasks.Outbound, error)
}

// Metrics counts denials (agent/metrics.Metrics).
type Metrics interface {
	AccessDenied(reasonCode string, enforced bool)
	RateLimited(limit string)
}

// AuditSink appends an audit record; it never fails the caller.
type AuditSink func(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any)

// Sender sends a message to a connected peer (the session manager's Send).
type Sender func(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error

// Deps are what authorization reads and writes outside itself.
type Deps struct {
	Self       Self
	Peers      PeerStore
	Held       GrantStore
	Stakes     StakeStore
	Reputation Reputation
	Tasks      Tasks
	Metrics    Metrics
	Audit      AuditSink
	Send       Sender
	// GrantStore persists the grants and revocations peers present and administrators sign; nil keeps
	// them in memory.
	GrantStore rbac.Store
	// AuthorizeLocal, when set, must also agree to a control request.
	AuthorizeLocal func(ctx context.Context, c rbac.Cred, op string) error
	// Load is the share of the inbound handshake slots in use (adaptive puzzle difficulty); nil is 0.
	Load func() float64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// UID is the daemon's uid (without authorization.local it and root hold every role).
	UID    uint32
	Logger *slog.Logger
}

// Authz is the agent's authorization (see the package comment).
type Authz struct {
	deps    Deps
	self    identity.ID
	az      *rbac.Authorizer
	pol     *policy.Policy
	geo     *policy.GeoDB
	geoPath string
	issuer  *puzzle.Issuer
	adm     *puzzle.Admission // nil when puzzles are disabled
	log     *slog.Logger
	// send answers a refused message (Deps.Send; tests replace it with SetSender).
	send Sender
	now  func() time.Time

	mu         sync.Mutex
	audit      auditGate   // audit.on_failure and the log's health (auditgate.go)
	requireLog bool        // authorization.require_admin_log
	enforceRB  bool        // authorization.enforce.grants
	defaults   []rbac.Role // authorization.default_peer_roles
	own        []rbac.Role // authorization.own_roles (AuthorizeSelf)
	releases   map[string]func()
	stakes     *consensus.StakeTable
	rates      map[string]*auditRate
	catchup    func(ctx context.Context, peer string, payload []byte) error // revocation_sync (OnCatchup)
	onBlock    func(rbac.BlockNotice)                                       // publishes issued block notices (OnBlockNotice)
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

// New builds the authorization of a configuration. Close releases the geo database.
func New(ctx context.Context, cfg *config.Config, deps Deps) (*Authz, error) {
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	z := &Authz{deps: deps, self: deps.Self.ID(), log: deps.Logger, send: deps.Send, now: deps.Now, releases: map[string]func(){},
		rates: map[string]*auditRate{}}
	rc, err := cfg.RBACConfig(deps.UID)
	if err != nil {
		return nil, fmt.Errorf("authorization: %w", err)
	}
	if z.az, err = rbac.NewAuthorizer(ctx, rc, rbac.Options{Resolve: z.IssuerKey, Store: deps.GrantStore, Logger: deps.Logger.With("part", "rbac")}); err != nil {
		return nil, fmt.Errorf("authorization: %w", err)
	}
	pc, err := cfg.PolicyConfig()
	if err != nil {
		return nil, err
	}
	z.geoPath = pc.Geo.Database
	if pc.Geo.Database != "" {
		if z.geo, err = policy.OpenGeo(pc.Geo.Database); err != nil {
			return nil, fmt.Errorf("policy.geo.database: %w", err)
		}
	}
	if z.pol, err = policy.New(pc, policy.Options{Geo: z.geo}); err != nil {
		z.Close()
		return nil, fmt.Errorf("policy: %w", err)
	}
	if z.issuer, err = puzzle.NewIssuer(puzzle.IssuerOptions{TTL: cfg.Puzzles.TTL}); err != nil {
		z.Close()
		return nil, err
	}
	if !cfg.Puzzles.Disabled {
		rep := deps.Reputation
		z.adm = &puzzle.Admission{
			Issuer:   z.issuer,
			Adaptive: puzzle.Adaptive{LoadStart: cfg.Puzzles.LoadStart, BitsPerDoubling: cfg.Puzzles.BitsPerDoubling, MaxBits: cfg.Puzzles.MaxBits},
			BaseBits: func(initiator string) uint8 {
				id, err := identity.ParseID(initiator)
				if err != nil {
					return rep.Effects(reputation.New).PuzzleBits
				}
				return rep.Effects(rep.Level(id)).PuzzleBits
			},
			Load: func() float64 {
				if deps.Load == nil {
					return 0
				}
				return deps.Load()
			},
		}
	}
	if err := z.loadAdminLogs(cfg.Authorization.AdminLogs); err != nil {
		z.Close()
		return nil, fmt.Errorf("%w: %v", config.ErrConfig, err)
	}
	if err := z.loadStakes(); err != nil {
		z.Close()
		return nil, err
	}
	z.setRuntime(cfg)
	return z, nil
}

// setRuntime applies the settings read on every decision.
func (z *Authz) setRuntime(cfg *config.Config) {
	roles, _ := config.ParseRoles(cfg.Authorization.DefaultPeerRoles) // validated
	own, _ := config.ParseRoles(cfg.Authorization.OwnRoleNames())     // validated
	z.mu.Lock()
	z.audit.refuse = cfg.Audit.OnFailure != config.AuditContinue
	z.requireLog = cfg.Authorization.RequireAdminLog
	z.enforceRB = config.Enforced(cfg.Authorization.Enforce.Grants)
	z.defaults = roles
	z.own = own
	z.mu.Unlock()
}

// Reload applies a new configuration's authorization and policy sections (SIGHUP). It changes nothing
// when one of them cannot be applied.
func (z *Authz) Reload(cfg *config.Config) error {
	rc, err := cfg.RBACConfig(z.deps.UID)
	if err != nil {
		return fmt.Errorf("authorization: %w", err)
	}
	pc, err := cfg.PolicyConfig()
	if err != nil {
		return err
	}
	pc.Geo.Database = z.geoPath // a new database needs a restart
	if err := z.pol.Reload(pc); err != nil {
		return fmt.Errorf("%w: policy: %v", config.ErrConfig, err)
	}
	if err := z.az.SetConfig(rc); err != nil {
		return fmt.Errorf("%w: authorization: %v", config.ErrConfig, err)
	}
	if err := z.loadAdminLogs(cfg.Authorization.AdminLogs); err != nil {
		return fmt.Errorf("%w: %v", config.ErrConfig, err)
	}
	z.setRuntime(cfg)
	return nil
}

// maxAdminLogFile bounds one authorization.admin_logs file.
const maxAdminLogFile = 4 << 20

// loadAdminLogs merges the key event logs of authorization.admin_logs into the peer cache. Each file must
// hold the verifying log of a configured administrator; the error names the file and what is wrong.
func (z *Authz) loadAdminLogs(paths []string) error {
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
					err = z.LearnLog(raw, id.String())
				}
			}
		}
		if err != nil {
			return fmt.Errorf("authorization.admin_logs[%d] (%s): %v", i, p, err)
		}
	}
	return nil
}

// Close releases the geo database.
func (z *Authz) Close() {
	if z.geo != nil {
		_ = z.geo.Close()
		z.geo = nil
	}
}

// Sweep re-evaluates trust levels against decayed scores every interval, and prunes expired grants,
// until ctx ends.
func (z *Authz) Sweep(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := z.deps.Reputation.Sweep(ctx); err != nil {
			z.log.Warn("reputation sweep", "err", err)
		}
		if n, err := z.az.Prune(ctx); err == nil && n > 0 {
			z.log.Info("expired grants pruned", "count", n)
		}
	}
}

// RBAC is the role-based authorizer (grants, revocations, administrators).
func (z *Authz) RBAC() *rbac.Authorizer { return z.az }

// Admission is the admission puzzle check asked of initiators (nil when puzzles are disabled).
func (z *Authz) Admission() *puzzle.Admission { return z.adm }

// SetSender replaces the function that answers refused messages (tests).
func (z *Authz) SetSender(s Sender) { z.send = s }

// Now is the clock authorization judges expiries by.
func (z *Authz) Now() time.Time { return z.now() }

// HoldsSlot reports whether a task of a peer holds one of its concurrent-task slots.
func (z *Authz) HoldsSlot(peer, taskID string) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.releases[peer+"\x00"+taskID] != nil
}

// errNoStakes is returned for stake-weighted votes without a stake table.
var errNoStakes = errors.New("no stake table is installed on this agent (an administrator signs one with agentctl grant stake; install it with agentctl grant stake install FILE), or vote with --vote reputation")
