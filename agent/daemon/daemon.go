// Package daemon is the Custos agent daemon (cmd/custosd, which agentctl run executes) as a composition
// root (ADR 0068): Start builds the rooms and passes them to each other, in order: the state database
// (agent/state) and reputation, the audit log and the metrics, the delegation manager and the identity's
// reloads (custody.Follower), authorization (agent/authz, authz.go), the transport plugins
// (agent/plugins) with the binding authority and discovery, the session manager (agent/sessions,
// sessions.go), the task engine and replicated tasks, the control socket with the rooms' control-API
// services (control.go), the HTTP gateway; then it listens and dials the bootstrap peers. Shutdown
// drains and closes them in order; Reload re-reads the configuration (agent/config decides what applies)
// and the identity. Options.Validator, Options.AdmitTask and Options.AuthorizeLocal are hooks that run
// after authorization's own checks. Logic belongs in the rooms: TestCompositionRootBudget bounds this
// package's size.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/api/agentops"
	"github.com/custos-agent/custos/agent/api/peerops"
	"github.com/custos-agent/custos/agent/api/taskops"
	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/bindauth"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/discovery"
	"github.com/custos-agent/custos/agent/events"
	"github.com/custos-agent/custos/agent/gateway"
	"github.com/custos-agent/custos/agent/mailbox"
	"github.com/custos-agent/custos/agent/metrics"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/plugins"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/retention"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/sessions"
	"github.com/custos-agent/custos/agent/state"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/privacy"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// Names inside the home directory (DESIGN 8).
const (
	StateFile   = "state.db"
	AuditDir    = api.AuditDir
	ControlFile = api.ControlFile
	WorkDir     = "work" // per-task working directories of exec handlers
	// TransportKeyDir holds the transport keys the host hands to plugins that need a stable transport
	// identity (libp2p, ADR 0070).
	TransportKeyDir = "transport-keys"
)

// Options are what Start needs.
type Options struct {
	// Home is the agent's home directory (0700).
	Home string
	// Config and its digest (LoadConfig); ConfigPath is re-read by Reload.
	Config       *config.Config
	ConfigDigest string
	ConfigPath   string
	// Custody is the opened identity (its keystore backends are the caller's business).
	Custody *custody.Custody
	// Logger receives the daemon's log; LogLevel, when set, follows the configuration's log.level (unless
	// LogLevelFixed: the command line chose it).
	Logger        *slog.Logger
	LogLevel      *slog.LevelVar
	LogLevelFixed bool
	// Validator, when set, runs after the daemon's own handshake checks (transport pin, reputation): the
	// hook for grants (rbac), resource policy and puzzles.
	Validator session.Validator
	// AdmitTask, when set, decides whether a verified peer's task request is accepted (rbac, quotas).
	AdmitTask func(ctx context.Context, peer string, req *tasks.Request) error
	// AuthorizeLocal, when set, decides whether a control-socket caller may run an operation (the hook for
	// rbac.Authorizer.AuthorizeLocal); nil allows the daemon's own uid and root.
	AuthorizeLocal func(ctx context.Context, caller rbac.Cred, op string) error
	// Version is reported in status and the audit log.
	Version string
	// Metrics, when set, are the agent's metrics (custosd makes them first, to instrument the keystores
	// the identity opens); nil makes new ones.
	Metrics *metrics.Metrics
	// SandboxProbe, when set, replaces the kernel probe of the plugin sandbox (tests simulate a kernel
	// that lacks a protection).
	SandboxProbe func() sandbox.Kernel
}

// Daemon is a running agent.
type Daemon struct {
	opts Options
	log  *slog.Logger
	home string
	id   identity.ID
	cust *custody.Custody

	mu     sync.Mutex
	cfg    *config.Config
	digest string
	ownLog identity.Log

	db         *state.DB
	peers      *peers.Cache
	rep        *reputation.Store
	taskStore  *tasks.Store
	audit      *audit.Log
	metrics    *metrics.Metrics
	metricsSrv *metrics.Server
	dm         *delegation.Manager
	replay     *replay.Cache
	engine     *tasks.Engine
	events     *events.Recorder // audit records, metrics and reputation observations of events
	authz      *authz.Authz     // authorization and trust (agent/authz; wired in authz.go)
	evidence   *consensus.EvidenceStore
	replicator *consensus.Replicator // replicated tasks (agent/consensus over taskops.Runner)
	giver      *authz.Giver          // feedback this agent gives: agentctl feedback, votes (ADR 0090)
	follower   *custody.Follower     // identity reloads (rotations made by agentctl)
	plugins    *plugins.Set          // the transport plugins (agent/plugins)
	disc       *discovery.Service    // agent records in the libp2p DHT (ADR 0070)
	mgr        *sessions.Manager
	sess       peerops.Manager // the session manager in the control API's types
	boot       peerops.Bootstrap
	// sessionConfig is each connection's session configuration (authz.SessionConfigs).
	sessionConfig func(transport, remote, pinned string) *session.Config
	ctl           *control.Server
	gw            *gateway.Server  // the HTTP API (agent/gateway), when gateway.listen is set
	mbox          *mailbox.Service // store-and-forward (agent/mailbox, ADR 0093): delivered when a peer comes up

	ctx      context.Context
	cancel   context.CancelFunc
	started  time.Time
	wg       sync.WaitGroup
	done     chan struct{}
	stopOnce sync.Once
	stopErr  error
	running  bool // Start completed
}

// Start brings the agent up. It returns once every transport listens and the control socket is served;
// a failure at any step undoes the earlier ones and names what failed.
func Start(ctx context.Context, opts Options) (_ *Daemon, err error) {
	if opts.Config == nil || opts.Custody == nil || opts.Home == "" {
		return nil, errors.New("daemon: Home, config.Config and Custody are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	// No process of the agent's uid (a plugin run unconfined, anything else) may read this process's
	// memory or environment, or ptrace it (ADR 0040).
	if err := sandbox.SetNonDumpable(); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d := &Daemon{opts: opts, log: opts.Logger, home: opts.Home, cust: opts.Custody, id: opts.Custody.ID(),
		cfg: opts.Config, digest: opts.ConfigDigest, ownLog: opts.Custody.Log(), metrics: opts.Metrics,
		ctx: dctx, cancel: cancel, started: time.Now().UTC(), done: make(chan struct{})}
	// Events become audit records, metrics and reputation observations (agent/events); its Audit,
	// Reputation, Outbound and IsReplicated are set below as each is built, before anything runs.
	d.events = &events.Recorder{Metrics: d.metrics, Log: d.log}
	defer func() {
		if err != nil {
			d.teardown(context.Background())
		}
	}()
	cfg := opts.Config
	d.applyLogLevel(cfg)
	addrs := privacy.Addresses{Full: cfg.Privacy.FullAddresses} // minimisation (ADR 0082): logs and audit records
	d.log = slog.New(addrs.LogHandler(d.log.Handler()))
	d.events.Log = d.log // the events' log lines are minimised too

	// Plugins first: a wrong checksum must stop the start before anything is opened, naming the file.
	if err := plugins.VerifyChecksums(cfg.Transports); err != nil {
		return nil, err
	}

	// The state database and its stores (agent/state), once for the whole process.
	if d.db, err = state.Open(ctx, filepath.Join(d.home, StateFile), d.cust, d.log); err != nil {
		return nil, err
	}
	d.peers, d.taskStore, d.evidence = d.db.Peers, d.db.Tasks, d.db.Evidence
	repCfg, err := cfg.ReputationSettings() // agent/config: the reputation and puzzles sections
	if err != nil {
		return nil, fmt.Errorf("%w: reputation: %v", config.ErrConfig, err)
	}
	d.rep, err = reputation.NewStore(ctx, d.db.Bolt, repCfg, reputation.Options{
		Resolve:   d.peers.Current,
		CheckTask: authz.FeedbackTask(d.peers), // agent/authz
		OnChange:  d.events.TrustChanged,
		Logger:    d.log.With("part", "reputation"),
	})
	if err != nil {
		return nil, err
	}
	d.events.Reputation = d.rep

	// The identity key signs audit checkpoints and delegations, nothing on the per-message path.
	signer, err := d.cust.Signer(ctx)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	d.audit, err = audit.Open(ctx, filepath.Join(d.home, AuditDir), audit.Options{
		Signer: signer, Generation: d.cust.Current().Generation, AgentID: d.id.String(),
		CheckpointEvery: cfg.Audit.CheckpointEvery, CheckpointInterval: cfg.Audit.CheckpointInterval,
		SegmentMaxBytes: cfg.Audit.SegmentMaxBytes, SegmentMaxAge: cfg.Audit.SegmentMaxAge,
		Retention: audit.Retention{MaxAge: cfg.AuditMaxAge(), MaxBytes: cfg.Audit.RetentionMaxBytes},
		Observer:  d.metrics, Logger: d.log.With("part", "audit"), Addresses: &addrs, SubjectKeys: d.db.AuditKeys(cfg.Privacy.SealAuditFields), // ADR 0099
	})
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	d.events.Audit = d.audit
	d.events.ConfigLoaded(opts.ConfigPath, d.digest)

	// Metrics: the home's and the keystore's health, the endpoint.
	d.metrics.WatchHome(d.home)
	d.run(func() { // the keystore's health (custos_keystore_up; failures also in custos_keystore_errors_total)
		d.metrics.WatchKeystore(dctx, agentops.KeystoreBackend(d.cust.KeystoreURI()), d.cust.Ping, cfg.Metrics.KeystoreCheckInterval, d.log.With("part", "metrics"))
	})
	if !cfg.Metrics.Disabled {
		d.metricsSrv, err = metrics.Serve(dctx, d.metrics, metrics.ServeOptions{Addr: cfg.Metrics.Address, Logger: d.log.With("part", "metrics")})
		if err != nil {
			return nil, fmt.Errorf("metrics endpoint: %w", err)
		}
	}

	// The operational keys (agent/delegation) and the identity's reloads.
	d.dm, err = delegation.NewManager(ctx, delegation.Config{Identity: signer, State: d.cust.State(),
		Mode: delegation.Mode(cfg.Delegation.Mode), Lifetime: cfg.Delegation.Lifetime, Logger: d.log.With("part", "delegation"),
		OnIssue: d.events.DelegationIssued})
	if err != nil {
		return nil, fmt.Errorf("delegation: %w", err)
	}
	d.run(func() { _ = d.dm.Run(dctx) })
	d.follower = d.newFollower() // identity reloads switch the audit log's and the delegations' signer
	d.replay = replay.New(replay.Config{Window: cfg.Session.ReplayWindow})

	// Authorization and trust (agent/authz, wired in authz.go): RBAC, resource policy, puzzles, grants, consensus evidence.
	if d.authz, err = newAuthz(ctx, d, cfg); err != nil {
		return nil, err
	}
	d.authz.SetAuditHealth(d.audit.Health) // audit.on_failure refuse: no new work while the log cannot write (ADR 0089)
	d.run(func() { d.authz.Sweep(dctx, cfg.Reputation.SweepInterval) })
	d.run(func() { // retention (agent/retention, ADR 0092); tasks, grants, feedback keys and audit segments age out where they live
		retention.Run(dctx, retention.Config{Settings: func() retention.Settings { return d.config().Privacy.Retention.Settings() },
			Peers: d.peers, Reputation: d.rep, Evidence: d.evidence, Tasks: d.taskStore, Grants: d.authz.RBAC(), Audit: d.audit, Logger: d.log.With("part", "retention")})
	})

	// The transport plugins (started below): binding authority, DHT record judge, DHT mode (self.lookup.answer).
	authority := bindauth.NewAuthority(d.id, d.dm, d.peers, d.keyLog, bindauth.DefaultBindingTTL)
	if d.disc, err = discovery.New(discovery.Config{Self: d.id, OwnLog: d.keyLog, Keys: d.dm.Current, Logs: d.peers,
		Networks: func() []discovery.Network { return d.plugins.Networks() }, Registerer: d.metrics.Registry(), Logger: d.log.With("part", "discovery"), Lifetime: cfg.Discovery.RecordLifetime(),
		Revocations: d.authz, Catchup: d.authz, Blocks: d.authz, Misbehaved: func(ctx context.Context, id identity.ID) { // invalid gossip (ADR 0091), catch-up (ADR 0096)
			_ = d.rep.Record(ctx, reputation.Observation{Peer: id, Kind: reputation.ProtocolError})
		}}); err != nil {
		return nil, err
	}
	d.authz.RBAC().OnRevocation(d.disc.RevocationHook(d.ctx, d.authz.IssuerLog)) // gossiped to every agent
	d.plugins = plugins.New(plugins.Config{Authority: authority, Judge: d.disc, AnswerLookups: d.authz.AnswersLookups, KeyDir: filepath.Join(d.home, TransportKeyDir),
		Events: d.events, Metrics: d.metrics, OnRestart: func() { d.mgr.WakeAll() }, SandboxProbe: opts.SandboxProbe, Logger: d.log})

	// The session manager (sessions.go) over the plugins; each connection's session configuration is authz's.
	d.sessionConfig = d.authz.SessionConfigs(d.sessionBase, opts.Validator)
	if d.mgr, err = d.newManager(cfg.Limits.MaxInboundHandshakes); err != nil {
		return nil, err
	}
	d.sess = peerops.Manager{M: d.mgr}
	d.boot = peerops.Bootstrap{Sessions: d.sess, Resolve: d.disc.Resolve, Has: d.plugins.Has, Logger: d.log}
	// The task engine (agent/tasks): it sends through authorization (Authz.Send: share_results, ADR 0094).
	d.engine, err = tasks.New(tasks.Config{
		LocalID: d.id.String(), Store: d.taskStore, Handlers: cfg.Registry(d.workRoot()), Keys: d.dm, Peers: d.peers,
		Sender: d.authz, Admit: opts.AdmitTask, MaxConcurrent: cfg.Limits.MaxConcurrentTasks, MaxQueued: cfg.Limits.MaxQueuedTasks,
		RetryInterval: cfg.Tasks.RetryInterval, Retention: cfg.Tasks.ResultRetention, Timeout: cfg.Tasks.Timeout,
		MaxUnacknowledged: cfg.Limits.MaxUnacknowledgedTasks, InboundRetention: cfg.Tasks.UnacknowledgedRetention,
		Logger: d.log.With("part", "tasks"), OnEvent: func(ev tasks.Event) { d.authz.TaskEvent(ev); d.events.Task(ev) },
	})
	if err != nil {
		return nil, err
	}
	// Replicated tasks (agent/consensus) run on the connected peers through the task engine.
	d.replicator = &consensus.Replicator{Rep: d.rep, Evidence: d.evidence, Peers: d.sess,
		Runner: taskops.Runner{Engine: d.engine, Self: d.id}}
	d.giver = d.authz.Giver(d.cust, d.rep, d.sess.Connected)
	d.replicator.Feedback = d.giver.Vote // agreers +100, dissenters -100, sent to the connected peers
	d.events.Outbound, d.events.IsReplicated = d.engine.Get, d.replicator.IsReplicated
	mc := cfg.Gateway.Mailbox // its bounds (zero: the defaults)
	d.db.Mailbox.SetLimits(mailbox.Limits{MaxMessage: mc.MaxMessageBytes, PerRecipient: mc.PerRecipient, Total: mc.Total, Retention: mc.Retention})
	d.mbox = &mailbox.Service{Self: d.id.String(), Store: d.db.Mailbox, Keys: d.dm, Peers: d.peers, Send: d.mgr.Send,
		Audit: d.events.Record, Window: cfg.Session.ReplayWindow, Logger: d.log.With("part", "mailbox"),
		Connected: func(p string) bool { return d.mgr.Session(p) != nil }}
	d.run(func() { d.mbox.Sweep(dctx, time.Hour) })
	d.metrics.TaskQueue(d.engine.Queued, func() int { return d.config().Limits.MaxQueuedTasks })
	// Working directories left by commands of a daemon that was killed are removed; their tasks run again.
	if err := tasks.RemoveWorkDirs(d.workRoot()); err != nil { // and their confined counterparts (ADR 0082)
		return nil, fmt.Errorf("task work directory: %w", err)
	}
	if err := os.MkdirAll(d.workRoot(), 0o700); err != nil {
		return nil, fmt.Errorf("task work directory: %w", err)
	}
	if err := d.engine.Start(); err != nil {
		return nil, err
	}

	// Every configured transport's plugin process and listeners (agent/plugins).
	for _, tc := range cfg.Transports {
		if err := d.plugins.Start(ctx, d.ctx, tc); err != nil {
			return nil, err
		}
	}

	// The control socket (agent/control) with the rooms' control-API services.
	hs, err := api.Join(d.services()...) // control.go: the rooms' handlers
	if err != nil {
		return nil, err
	}
	// Mutating operations are refused while the audit log cannot write (ADR 0089).
	hs = d.authz.GuardAudit(hs)
	ops, err := api.Ops(hs) // each with its permission from api.Table
	if err != nil {
		return nil, err
	}
	d.ctl, err = control.Listen(control.Config{
		Path: filepath.Join(d.home, ControlFile), Ops: ops, Authorize: d.authz.AuthorizeOp, // agent/authz (then opts.AuthorizeLocal)
		// The control socket serves people, not plugins: transport plugin processes and their descendants
		// are refused before their request is read (threat model, section 2).
		RefuseCaller: control.RefusePluginProcesses(d.plugins.PIDs),
		OnRequest:    d.events.ControlRequest, Logger: d.log.With("part", "control"),
	})
	if err != nil {
		return nil, err
	}
	d.run(func() {
		if err := d.ctl.Serve(); err != nil {
			d.log.Error("control socket stopped", "err", err)
		}
	})

	if cfg.Gateway.Enabled() { // the HTTP API: the same handlers as the control socket, its own keys and limits
		roles, err := cfg.GatewayRoles()
		if err != nil {
			return nil, fmt.Errorf("%w: gateway: %v", config.ErrConfig, err)
		}
		d.gw, err = gateway.New(gateway.Options{Config: cfg.Gateway, AgentID: d.id.String(), Keys: d.db.GatewayKeys, Roles: roles, Audit: d.events.Record, Mailbox: d.mbox,
			Ops:     gateway.HandlerOps{Handlers: hs, Cred: rbac.Cred{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}},
			Metrics: d.metrics.Registry(), Logger: d.log.With("part", "gateway"), Binder: authority})
		if err == nil {
			err = d.gw.Start(ctx)
		}
		if err != nil {
			return nil, err
		}
	}
	// Running: accept on every listener, dial the bootstrap peers, publish this agent's record.
	d.plugins.Listeners(func(name string, l *host.Listener) { d.mgr.Serve(dctx, name, sessions.ListenerOf[*host.Conn](l)) })
	d.boot.Add(dctx, cfg.Bootstrap)
	d.run(func() { d.disc.Run(dctx) }) // publishes this agent's record: now, on address changes, before expiry
	// The identity's own lifecycle (ADR 0090): rotation on rotation.interval, retired keys destroyed when their grace ends.
	d.metrics.IdentityKeyAge(d.cust.CurrentSince, func() time.Duration { return d.config().Rotation.Interval }, time.Now)
	sched := &custody.Schedule{Custody: d.cust, Settings: func() custody.ScheduleSettings { return d.config().Rotation.Schedule() },
		Change: func(ctx context.Context, op func(context.Context) error) error {
			_, _, err := d.follower.Change(ctx, d.id.String(), custody.SourceSchedule, op)
			return err
		},
		OnRotate:  func(g uint64, err error) { d.events.ScheduledRotation(d.id.String(), g, err) },
		OnDestroy: d.events.ScheduledDestroy, Logger: d.log.With("part", "custody")}
	d.run(func() { sched.Run(dctx) })
	d.events.AgentStarted(d.id.String(), opts.Version, agentops.KeystoreBackend(d.cust.KeystoreURI()), d.cust.Current().Generation, d.plugins.Names())
	d.running = true
	d.log.Info("agent running", "id", d.id, "generation", d.cust.Current().Generation, "transports", d.plugins.Names(),
		"control", d.ctl.Path(), "metrics", d.metricsURL())
	return d, nil
}

func (d *Daemon) workRoot() string { return filepath.Join(d.home, WorkDir) }

func (d *Daemon) config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

func (d *Daemon) keyLog() *identity.Log {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &identity.Log{Events: append([]identity.Event(nil), d.ownLog.Events...)}
}

func (d *Daemon) applyLogLevel(cfg *config.Config) {
	if d.opts.LogLevel == nil || d.opts.LogLevelFixed {
		return
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(cfg.Log.Level)); err == nil {
		d.opts.LogLevel.Set(lv)
	}
}

// run runs f in a goroutine Shutdown waits for.
func (d *Daemon) run(f func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
}

// Done is closed when the daemon has stopped.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// ID is the agent ID.
func (d *Daemon) ID() identity.ID { return d.id }

// Shutdown drains and stops the agent: it stops accepting connections and control requests, lets running
// tasks finish until ctx's deadline (unfinished ones stay recorded and run again at the next start),
// delivers what it can, closes every session, stops the plugins, and seals the audit log. It is safe to
// call more than once.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.stopOnce.Do(func() {
		d.log.Info("shutting down: draining")
		d.plugins.Drain() // no plugin restart during the drain (ADR 0088), no new connection
		if d.gw != nil {
			_ = d.gw.Close(ctx)
		}
		if d.ctl != nil {
			_ = d.ctl.Close()
		}
		if n := d.engine.Drain(ctx); n > 0 {
			d.log.Warn("tasks interrupted by the drain deadline; they run again at the next start", "count", n)
		}
		d.stopErr = d.teardown(ctx)
		close(d.done)
	})
	return d.stopErr
}

// teardown closes everything that was opened, in reverse order.
func (d *Daemon) teardown(ctx context.Context) error {
	var errs []error
	if d.gw != nil {
		_ = d.gw.Close(ctx)
	}
	if d.ctl != nil {
		_ = d.ctl.Close()
	}
	if d.engine != nil {
		d.engine.Close()
	}
	if d.mgr != nil {
		d.mgr.CloseAll()
	}
	d.cancel()
	if d.mgr != nil {
		d.mgr.Wait()
	}
	if d.plugins != nil {
		errs = append(errs, d.plugins.Close())
	}
	if d.metricsSrv != nil {
		_ = d.metricsSrv.Close()
	}
	d.wg.Wait()
	if d.dm != nil {
		d.dm.Close()
	}
	if d.audit != nil {
		if d.running {
			d.events.AgentStopped(d.id.String())
		}
		if err := d.audit.Close(); err != nil {
			errs = append(errs, fmt.Errorf("audit log: %w", err))
		}
	}
	if d.authz != nil {
		d.authz.Close()
	}
	if d.db != nil {
		if err := d.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("state database: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Reload re-reads the configuration and the identity (agentctl rotate), applies what config.Reloadable names
// (plugin binaries first: docs/updating.md), and audits and logs the change. An invalid file changes nothing.
func (d *Daemon) Reload(ctx context.Context) (*api.ReloadResult, error) {
	cfg, digest, err := config.LoadConfig(d.opts.ConfigPath)
	if err != nil {
		d.events.ConfigRefused(d.opts.ConfigPath, d.currentDigest(), err)
		return nil, err
	}
	d.mu.Lock()
	old, oldDigest := d.cfg, d.digest
	d.mu.Unlock()
	res := &api.ReloadResult{Digest: digest, PreviousDigest: oldDigest, Changed: config.Diff(old, cfg)}
	res.Applied, res.NeedRestart = config.Classify(res.Changed)
	err = d.plugins.ApplyUpdates(ctx, old, cfg) // agent/plugins: a failed update runs the previous binary again
	if err == nil {
		err = d.authz.Reload(cfg) // agent/authz: authorization and policy apply at once
	}
	if err == nil {
		err = d.engine.SetHandlers(cfg.Registry(d.workRoot()))
	}
	if err != nil {
		d.events.ConfigRefused(d.opts.ConfigPath, digest, err)
		return nil, err
	}
	d.mu.Lock()
	d.cfg, d.digest = config.InForce(old, cfg), digest // settings that need a restart keep their running values
	d.mu.Unlock()
	d.applyLogLevel(cfg)
	d.boot.Update(d.ctx, old.Bootstrap, cfg.Bootstrap)
	rotated, _, err := d.follower.Reload(ctx, "operator")
	if err != nil {
		d.log.Error("identity reload failed; the running identity is unchanged", "err", err)
	}
	res.Rotated, res.Generation = rotated, d.cust.Current().Generation
	d.events.ConfigReloaded(d.opts.ConfigPath, res)
	return res, nil
}

// newFollower is the identity's reloads (custody.Follower): key events to the audit log (agent/events),
// then the new generation's signer to the audit log's checkpoints and the delegation manager, new
// transport bindings, and every session re-authenticated (the old generation's operational keys are
// wiped; each peer gets the longer key event log).
func (d *Daemon) newFollower() *custody.Follower {
	return &custody.Follower{Custody: d.cust, KeyEvents: d.events.KeyEventsFrom,
		Switch: []func(context.Context, keystore.Signer, uint64, identity.State) error{
			func(_ context.Context, s keystore.Signer, g uint64, _ identity.State) error {
				d.mu.Lock()
				d.ownLog = d.cust.Log()
				d.mu.Unlock()
				return d.audit.SetSigner(s, g)
			},
			func(ctx context.Context, s keystore.Signer, _ uint64, st identity.State) error {
				_, err := d.dm.SetIdentity(ctx, s, st)
				return err
			},
		},
		Switched: func(ctx context.Context, g, before uint64) {
			d.plugins.Rebind(ctx)
			n := d.mgr.ReauthenticateAll()
			d.log.Info("identity reloaded", "generation", g, "previous", before, "sessions_reauthenticating", n)
		},
	}
}

// sessionBase is a connection's session settings in force, before authorization's checks (sessionConfig).
func (d *Daemon) sessionBase(transport, remote string) *session.Config {
	s := d.config().Session
	return &session.Config{Delegations: d.dm, KeyLog: d.keyLog, Peers: d.peers, Replay: d.replay, Hybrid: s.Hybrid,
		SignEnvelopes: s.SignEnvelopes, HandshakeTimeout: s.HandshakeTimeout, ReauthInterval: s.ReauthInterval,
		Logger:  d.log.With("part", "session", "transport", transport),
		OnEvent: func(ev session.Event) { d.events.Session(transport, remote, ev) }}
}

func (d *Daemon) currentDigest() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.digest
}

func (d *Daemon) metricsURL() string {
	if d.metricsSrv == nil {
		return ""
	}
	return d.metricsSrv.URL()
}

// DrainTimeout is how long Shutdown should let running tasks finish (limits.drain_timeout).
func (d *Daemon) DrainTimeout() time.Duration { return d.config().Limits.DrainTimeout }
