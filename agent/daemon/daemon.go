// Package daemon is the Custos agent daemon (cmd/custosd, which agentctl run executes): it opens the identity (agent/custody) and the
// state database once, starts the delegation manager, the audit log and the metrics endpoint, launches
// every configured transport plugin with a binding authority backed by the operational key, listens,
// dials the bootstrap peers, runs the agent handshake on every connection, keeps one session per peer
// (re-dialling with backoff when a session or a plugin goes down), runs the task protocol (agent/tasks)
// over the sessions, and serves the local control socket (agent/control) with the handlers of the
// control API (agent/api: its table gives each operation's permission) that the other agentctl commands use. Shutdown drains; Reload re-reads the configuration and the identity.
//
// Authorization and trust (RBAC, resource policy, reputation, puzzles, grants) are agent/authz, built over
// the daemon's stores in authz.go; replicated tasks run through consensus.Replicator (authz_replicate.go;
// docs/authorization.md §7, ADR 0023, ADR 0065); Options.Validator, Options.AdmitTask and
// Options.AuthorizeLocal are further hooks that run after them.
package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/api/agentops"
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
	"github.com/custos-agent/custos/agent/metrics"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/puzzle"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/sessions"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/privacy"
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

type transportState struct {
	cfg       config.TransportConfig
	t         *host.Transport
	listeners []*host.Listener
}

// Daemon is a running agent.
type Daemon struct {
	opts Options
	log  *slog.Logger
	home string
	id   identity.ID
	cust *custody.Custody

	mu     sync.Mutex
	idMu   sync.Mutex // serialises identity reloads (keyevents.go)
	cfg    *config.Config
	digest string
	ownLog identity.Log

	db         *bbolt.DB
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
	replicator *consensus.Replicator // replicated tasks (authz_replicate.go)
	giver      *authz.Giver          // feedback this agent gives: agentctl feedback, votes (ADR 0090)
	authority  *bindauth.Authority
	transports map[string]*transportState
	disc       *discovery.Service // agent records in the libp2p DHT (ADR 0070)
	mgr        *manager
	ctl        *control.Server
	gw         *gateway.Server // the HTTP API (agent/gateway), when gateway.listen is set
	gwKeys     *gateway.Keys   // the gateway's API keys (a control API service)

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
		transports: map[string]*transportState{}, ctx: dctx, cancel: cancel, started: time.Now().UTC(), done: make(chan struct{})}
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

	// Plugins first: a wrong checksum must stop the start before anything is opened, naming the file.
	for _, t := range cfg.Transports {
		sum, err := host.FileSHA256(t.Plugin)
		if err != nil {
			return nil, fmt.Errorf("transport %s: plugin %s: %w", t.Name, t.Plugin, err)
		}
		if sum != t.SHA256 {
			return nil, fmt.Errorf("transport %s: plugin %s: %w: the file's SHA-256 is %s, the configuration says %s (reinstall the plugin or update transports[].sha256)",
				t.Name, t.Plugin, host.ErrChecksum, sum, t.SHA256)
		}
	}

	// The state database, once for the whole process (bbolt allows one handle per file).
	dbPath := filepath.Join(d.home, StateFile)
	d.db, err = bbolt.Open(dbPath, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%s is locked by another process: is an agent already running for this home?", dbPath)
		}
		return nil, fmt.Errorf("open %s: %w", dbPath, err)
	}
	if d.peers, err = peers.New(d.db); err != nil {
		return nil, err
	}
	if d.taskStore, err = tasks.NewStore(d.db); err != nil {
		return nil, err
	}
	repCfg, err := cfg.ReputationSettings() // agent/config: the reputation and puzzles sections
	if err != nil {
		return nil, fmt.Errorf("%w: reputation: %v", config.ErrConfig, err)
	}
	d.rep, err = reputation.NewStore(ctx, d.db, repCfg, reputation.Options{
		Resolve:   d.currentKeyOf,
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
		Retention: audit.Retention{MaxAge: cfg.Audit.RetentionMaxAge, MaxBytes: cfg.Audit.RetentionMaxBytes},
		Observer:  d.metrics, Logger: d.log.With("part", "audit"), Addresses: &addrs,
	})
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	d.events.Audit = d.audit
	d.events.Record(audit.ConfigLoaded, "operator", opts.ConfigPath, audit.OutcomeInfo, map[string]any{"digest": d.digest})

	d.metrics.WatchHome(d.home)
	d.wg.Add(1)
	go func() { // the keystore's health (custos_keystore_up; failures also in custos_keystore_errors_total)
		defer d.wg.Done()
		d.metrics.WatchKeystore(dctx, agentops.KeystoreBackend(d.cust.KeystoreURI()), d.cust.Ping, cfg.Metrics.KeystoreCheckInterval, d.log.With("part", "metrics"))
	}()
	if !cfg.Metrics.Disabled {
		d.metricsSrv, err = metrics.Serve(dctx, d.metrics, metrics.ServeOptions{Addr: cfg.Metrics.Address, Logger: d.log.With("part", "metrics")})
		if err != nil {
			return nil, fmt.Errorf("metrics endpoint: %w", err)
		}
	}

	d.dm, err = delegation.NewManager(ctx, delegation.Config{Identity: signer, State: d.cust.State(),
		Mode: delegation.Mode(cfg.Delegation.Mode), Lifetime: cfg.Delegation.Lifetime, Logger: d.log.With("part", "delegation"),
		OnIssue: d.events.DelegationIssued})
	if err != nil {
		return nil, fmt.Errorf("delegation: %w", err)
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		_ = d.dm.Run(dctx)
	}()
	d.replay = replay.New(replay.Config{Window: cfg.Session.ReplayWindow})
	// Authorization and trust (agent/authz, wired in authz.go): RBAC, resource policy, puzzles, grants, consensus evidence.
	if d.authz, err = newAuthz(ctx, d, cfg); err != nil {
		return nil, err
	}
	d.authz.SetAuditHealth(d.audit.Health) // audit.on_failure refuse: no new work while the log cannot write (ADR 0089)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.authz.Sweep(dctx, cfg.Reputation.SweepInterval)
	}()

	if d.mgr, err = d.newManager(cfg.Limits.MaxInboundHandshakes); err != nil {
		return nil, err
	}
	d.engine, err = tasks.New(tasks.Config{
		LocalID: d.id.String(), Store: d.taskStore, Handlers: cfg.Registry(d.workRoot()), Keys: d.dm, Peers: d.peers,
		Sender: d.mgr, Admit: opts.AdmitTask, MaxConcurrent: cfg.Limits.MaxConcurrentTasks, MaxQueued: cfg.Limits.MaxQueuedTasks,
		RetryInterval: cfg.Tasks.RetryInterval, Retention: cfg.Tasks.ResultRetention, Timeout: cfg.Tasks.Timeout,
		MaxUnacknowledged: cfg.Limits.MaxUnacknowledgedTasks, InboundRetention: cfg.Tasks.UnacknowledgedRetention,
		Logger: d.log.With("part", "tasks"), OnEvent: func(ev tasks.Event) { d.authz.TaskEvent(ev); d.events.Task(ev) },
	})
	if err != nil {
		return nil, err
	}
	// Replicated tasks (agent/consensus) run on the connected peers through the task engine.
	d.replicator = &consensus.Replicator{Rep: d.rep, Evidence: d.evidence, Peers: sessionsView{m: d.mgr, ctx: d.ctx},
		Runner: taskops.Runner{Engine: d.engine, Self: d.id}}
	d.giver = d.authz.Giver(d.cust, d.rep, sessionsView{m: d.mgr, ctx: d.ctx}.Connected)
	d.replicator.Feedback = d.giver.Vote // agreers +100, dissenters -100, sent to the connected peers
	d.events.Outbound, d.events.IsReplicated = d.engine.Get, d.replicator.IsReplicated
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

	d.authority = bindauth.NewAuthority(d.id, d.dm, d.peers, d.keyLog, bindauth.DefaultBindingTTL)
	if d.disc, err = discovery.New(discovery.Config{Self: d.id, OwnLog: d.keyLog, Keys: d.dm.Current, Logs: d.peers,
		Networks: d.discoveryNetworks, Registerer: d.metrics.Registry(), Logger: d.log.With("part", "discovery"),
		Revocations: d.authz, Misbehaved: func(ctx context.Context, id identity.ID) { // invalid gossip (ADR 0091)
			_ = d.rep.Record(ctx, reputation.Observation{Peer: id, Kind: reputation.ProtocolError})
		}}); err != nil {
		return nil, err
	}
	d.authz.RBAC().OnRevocation(d.disc.RevocationHook(d.ctx, d.authz.IssuerLog)) // gossiped to every agent
	for _, tc := range cfg.Transports {
		if err := d.startTransport(ctx, tc); err != nil {
			return nil, err
		}
	}

	d.gwKeys, err = gateway.NewKeys(d.db, nil) // the HTTP gateway's API keys (agentctl gateway key)
	if err != nil {
		return nil, err
	}
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
		RefuseCaller: control.RefusePluginProcesses(d.pluginPIDs),
		OnRequest:    d.events.ControlRequest, Logger: d.log.With("part", "control"),
	})
	if err != nil {
		return nil, err
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.ctl.Serve(); err != nil {
			d.log.Error("control socket stopped", "err", err)
		}
	}()

	if cfg.Gateway.Enabled() { // the HTTP API: the same handlers as the control socket, its own keys and limits
		roles, err := cfg.GatewayRoles()
		if err != nil {
			return nil, fmt.Errorf("%w: gateway: %v", config.ErrConfig, err)
		}
		d.gw, err = gateway.New(gateway.Options{Config: cfg.Gateway, AgentID: d.id.String(), Keys: d.gwKeys, Roles: roles, Audit: d.events.Record,
			Ops:     gateway.HandlerOps{Handlers: hs, Cred: rbac.Cred{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}},
			Metrics: d.metrics.Registry(), Logger: d.log.With("part", "gateway")})
		if err == nil {
			err = d.gw.Start(ctx)
		}
		if err != nil {
			return nil, err
		}
	}
	for name, ts := range d.transports {
		for _, l := range ts.listeners {
			d.mgr.Serve(dctx, name, sessions.ListenerOf[*host.Conn](l))
		}
	}
	d.addBootstrap(cfg)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.disc.Run(dctx) // publishes this agent's record: now, on address changes, before expiry
	}()
	// The identity's own lifecycle (ADR 0090): rotation on rotation.interval, retired keys destroyed when their grace ends.
	d.metrics.IdentityKeyAge(d.cust.CurrentSince, func() time.Duration { return d.config().Rotation.Interval }, time.Now)
	sched := &custody.Schedule{Custody: d.cust, Settings: func() custody.ScheduleSettings { return d.config().Rotation.Schedule() },
		Change: func(ctx context.Context, op func(context.Context) error) error {
			_, _, err := d.changeIdentity(ctx, d.id.String(), custody.SourceSchedule, op)
			return err
		},
		OnRotate:  func(g uint64, err error) { d.events.ScheduledRotation(d.id.String(), g, err) },
		OnDestroy: d.events.ScheduledDestroy, Logger: d.log.With("part", "custody")}
	d.wg.Add(1)
	go func() { defer d.wg.Done(); sched.Run(dctx) }()
	d.events.Record(audit.AgentStarted, d.id.String(), d.id.String(), audit.OutcomeSuccess, map[string]any{
		"version": opts.Version, "keystore": agentops.KeystoreBackend(d.cust.KeystoreURI()), "generation": d.cust.Current().Generation,
		"transports": strings.Join(d.transportNames(), ","),
	})
	d.running = true
	d.log.Info("agent running", "id", d.id, "generation", d.cust.Current().Generation, "transports", d.transportNames(),
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
	l := identity.Log{Events: append([]identity.Event(nil), d.ownLog.Events...)}
	return &l
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

func (d *Daemon) currentKeyOf(id identity.ID) (identity.State, error) {
	st, ok, err := d.peers.State(id.String())
	if err != nil {
		return identity.State{}, err
	}
	if !ok {
		return identity.State{}, fmt.Errorf("no key event log cached for %s", id)
	}
	return st, nil
}

func (d *Daemon) startTransport(ctx context.Context, tc config.TransportConfig) error {
	mode, err := sandbox.ParseMode(tc.Sandbox)
	if err != nil {
		return fmt.Errorf("transport %s: %w", tc.Name, err)
	}
	if mode == sandbox.Off {
		d.log.Error("transport plugin sandbox is OFF: the plugin runs unconfined, as the agent's uid, and can reach the home, the control socket and the agent's memory",
			"transport", tc.Name, "plugin", tc.Plugin)
	}
	var tkey ed25519.PrivateKey
	if tc.Name == "libp2p" { // a stable peer ID, so /p2p/ addresses survive plugin restarts (ADR 0070)
		if tkey, err = host.LoadTransportKey(filepath.Join(d.home, TransportKeyDir, tc.Name+".key")); err != nil {
			return fmt.Errorf("transport %s: %w", tc.Name, err)
		}
	}
	t, err := host.Start(d.ctx, host.Config{
		Name: tc.Name, Path: tc.Plugin, SHA256: tc.SHA256, Options: tc.Options, Authority: d.authority,
		Observer: observer{d}, Logger: d.log, Sandbox: mode, User: tc.User, BindPorts: bindPorts(tc),
		SandboxProbe: d.opts.SandboxProbe, TransportKey: tkey, Judge: d.disc,
	})
	if err != nil {
		return fmt.Errorf("transport %s: plugin %s: %w", tc.Name, tc.Plugin, err)
	}
	ts := &transportState{cfg: tc, t: t}
	d.transports[tc.Name] = ts
	prot := t.Sandbox()
	d.metrics.PluginSandbox(tc.Name, sandboxGauges(prot))
	if mode == sandbox.BestEffort {
		for _, p := range sandbox.All() {
			if !prot.Has(p) && p != sandbox.UIDDrop {
				d.log.Warn("transport plugin runs without a sandbox protection the kernel lacks", "transport", tc.Name, "protection", p)
			}
		}
	}
	d.events.Record(audit.PluginStarted, "agent", tc.Name, audit.OutcomeSuccess, map[string]any{"path": tc.Plugin, "sha256": tc.SHA256, "pid": t.PID(),
		"sandbox": prot.String(), "sandbox_mode": string(mode)})
	for _, addr := range tc.Listen {
		l, err := t.Listen(ctx, addr)
		if err != nil {
			return fmt.Errorf("transport %s: listen on %s: %w", tc.Name, addr, err)
		}
		ts.listeners = append(ts.listeners, l)
		d.log.Info("listening", "transport", tc.Name, "addrs", l.Addrs())
	}
	return nil
}

func (d *Daemon) transport(name string) *transportState { return d.transports[name] }

// discoveryNetworks are the transports and their listeners, for agent/discovery. d.transports is only
// written before the daemon runs.
func (d *Daemon) discoveryNetworks() []discovery.Network {
	var out []discovery.Network
	for _, name := range d.transportNames() {
		ts := d.transports[name]
		n := discovery.Network{T: ts.t}
		for _, l := range ts.listeners {
			n.Listeners = append(n.Listeners, l)
		}
		out = append(out, n)
	}
	return out
}

// pluginPIDs lists the live transport plugin processes: the control socket refuses them and their
// descendants (control.RefusePluginProcesses). d.transports is only written before the socket is served.
func (d *Daemon) pluginPIDs() []int {
	var out []int
	for _, ts := range d.transports {
		if pid := ts.t.PID(); pid > 0 {
			out = append(out, pid)
		}
	}
	return out
}

// sandboxGauges is the metric value of each protection.
func sandboxGauges(p sandbox.Protections) map[string]bool {
	m := map[string]bool{}
	for _, n := range sandbox.All() {
		m[n] = p.Has(n)
	}
	return m
}

// bindPorts are the TCP ports a tcp or ws plugin may bind (its listen addresses; none when it only
// dials); nil (no Landlock network rule) for other transports or an address without a numeric port.
func bindPorts(tc config.TransportConfig) []uint16 {
	if tc.Name != "tcp" && tc.Name != "ws" {
		return nil
	}
	ports := []uint16{}
	for _, a := range tc.Listen {
		hp := a
		if u, err := url.Parse(a); err == nil && u.Host != "" {
			hp = u.Host
		}
		_, p, err := net.SplitHostPort(hp)
		if err != nil {
			return nil
		}
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return nil
		}
		ports = append(ports, uint16(n))
	}
	return ports
}

func (d *Daemon) transportNames() []string {
	var out []string
	for n := range d.transports {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (d *Daemon) addBootstrap(cfg *config.Config) {
	byID := map[string][]api.Address{}
	var order []string
	for _, p := range cfg.Bootstrap {
		id, _ := identity.ParseID(p.ID)
		if p.Address == "" { // by agent ID only: resolved through the DHT, then pinned as any target
			go d.disc.Resolve(d.ctx, id, func(addrs []discovery.Addr) {
				var as []api.Address
				for _, a := range addrs {
					if d.transport(a.Transport) != nil && (p.Transport == "" || p.Transport == a.Transport) {
						as = append(as, api.Address{Transport: a.Transport, Address: a.Addr})
					}
				}
				if len(as) == 0 {
					d.log.Warn("bootstrap agent found, but on no transport this agent has", "id", id.String(), "addrs", len(addrs))
					return
				}
				d.mgr.addTarget(d.ctx, id.String(), as, "bootstrap")
			})
			continue
		}
		tn := p.Transport
		if tn == "" {
			tn = config.InferTransport(p.Address)
		}
		if _, ok := byID[id.String()]; !ok {
			order = append(order, id.String())
		}
		byID[id.String()] = append(byID[id.String()], api.Address{Transport: tn, Address: p.Address})
	}
	for _, id := range order {
		d.mgr.addTarget(d.ctx, id, byID[id], "bootstrap")
	}
}

// sessionConfig is the session configuration of one connection: the daemon's base settings, a validator
// that requires the handshake's peer to be the agent the transport binding named, runs the authorization
// checks (authz.validate: puzzle, Blocked peers, grants, policy), then Options.Validator; the early
// refusals of an initiator (admitEarly: puzzle, Blocked) before anything it sent is verified or stored;
// and events reported with the transport and remote address.
func (d *Daemon) sessionConfig(transport, remote, pinned string) *session.Config {
	cfg := d.config()
	// A puzzle solution is single-use: once admitEarly has verified this connection's, authz.validate
	// is shown the peer without it (a puzzle verified once, by the early check).
	var early earlyAdmission
	return &session.Config{
		Delegations: d.dm, KeyLog: d.keyLog, Peers: d.peers, Replay: d.replay, Hybrid: cfg.Session.Hybrid,
		SignEnvelopes:    cfg.Session.SignEnvelopes,
		HandshakeTimeout: cfg.Session.HandshakeTimeout, ReauthInterval: cfg.Session.ReauthInterval,
		Logger: d.log.With("part", "session", "transport", transport),
		Validator: session.ValidatorFunc(func(ctx context.Context, p *session.Peer) error {
			if pinned != "" && p.ID.String() != pinned {
				return fmt.Errorf("the transport binding named %s but the handshake authenticated %s", pinned, p.ID)
			}
			// Puzzle, trust level (Blocked refused), grants, connection policy: agent/authz.
			if err := d.authz.Validate(ctx, early.strip(p)); err != nil {
				return err
			}
			if d.opts.Validator != nil {
				return d.opts.Validator.Validate(ctx, p)
			}
			return nil
		}),
		// Before the initiator's log, delegation and signature are verified: its puzzle and Blocked.
		Admit:   session.ValidatorFunc(func(_ context.Context, p *session.Peer) error { return d.admitEarly(p, &early) }),
		OnEvent: func(ev session.Event) { d.events.Session(transport, remote, ev) },
		// Admission puzzles asked of initiators, solved when asked; the grants this agent holds (agent/authz).
		Puzzler: d.authz.Puzzler(), Solver: puzzle.Solver{}, Grants: d.authz.Presentable(),
	}
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
		for _, ts := range d.transports {
			ts.t.Drain() // no plugin restart during the drain (ADR 0088)
			for _, l := range ts.listeners {
				_ = l.Close()
			}
		}
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
	for _, name := range d.transportNames() {
		ts := d.transports[name]
		if err := ts.t.Close(); err != nil {
			errs = append(errs, fmt.Errorf("transport %s: %w", name, err))
		}
		d.events.Record(audit.PluginStopped, "agent", name, audit.OutcomeSuccess, map[string]any{"path": ts.cfg.Plugin, "sha256": ts.cfg.SHA256})
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
			d.events.Record(audit.AgentStopped, d.id.String(), d.id.String(), audit.OutcomeSuccess, nil)
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

// Reload re-reads the configuration file and the identity (a rotation made by agentctl rotate). It applies
// what can change while running (handlers, bootstrap peers, session and redial settings, log level) and
// names the rest as needing a restart; it writes an audit record with the new and previous digests and
// logs the change. An invalid file changes nothing.
func (d *Daemon) Reload(ctx context.Context) (*api.ReloadResult, error) {
	cfg, digest, err := config.LoadConfig(d.opts.ConfigPath)
	if err != nil {
		d.events.Record(audit.ConfigChanged, "operator", d.opts.ConfigPath, audit.OutcomeFailure, map[string]any{"digest": d.currentDigest(), "error": err.Error()})
		d.log.Error("configuration reload refused; the running configuration is unchanged", "err", err)
		return nil, err
	}
	d.mu.Lock()
	old, oldDigest := d.cfg, d.digest
	d.mu.Unlock()
	res := &api.ReloadResult{Digest: digest, PreviousDigest: oldDigest, Changed: config.Diff(old, cfg)}
	for _, c := range res.Changed {
		switch {
		case strings.HasPrefix(c, "handlers."):
			res.Applied = append(res.Applied, c)
		case c == "bootstrap", c == "session", c == "redial", c == "log", c == "authorization", c == "policy", c == "rotation":
			res.Applied = append(res.Applied, c)
		default:
			res.NeedRestart = append(res.NeedRestart, c)
		}
	}
	if err := d.authz.Reload(cfg); err != nil { // agent/authz: authorization and policy apply at once
		d.events.Record(audit.ConfigChanged, "operator", d.opts.ConfigPath, audit.OutcomeFailure, map[string]any{"digest": digest, "error": err.Error()})
		d.log.Error("configuration reload refused; the running configuration is unchanged", "err", err)
		return nil, err
	}
	if err := d.engine.SetHandlers(cfg.Registry(d.workRoot())); err != nil {
		return nil, err
	}
	d.mu.Lock()
	// Settings that need a restart keep their running values so status stays truthful.
	keep := *cfg
	keep.Transports, keep.Delegation, keep.Limits, keep.Tasks, keep.Metrics, keep.Audit = old.Transports, old.Delegation, old.Limits, old.Tasks, old.Metrics, old.Audit
	keep.Reputation, keep.Puzzles, keep.Policy.Geo.Database = old.Reputation, old.Puzzles, old.Policy.Geo.Database // authz: need a restart
	d.cfg, d.digest = &keep, digest
	d.mu.Unlock()
	d.applyLogLevel(cfg)
	if !slices.Equal(old.Bootstrap, cfg.Bootstrap) {
		cur := map[string]bool{}
		for _, p := range cfg.Bootstrap {
			id, _ := identity.ParseID(p.ID)
			cur[id.String()] = true
		}
		for id, ts := range d.mgr.targetStatuses() {
			if ts.Source == "bootstrap" && !cur[id] {
				d.mgr.removeTarget(id)
			}
		}
		d.addBootstrap(cfg)
	}
	rotated, _, err := d.reloadIdentity(ctx, "operator")
	if err != nil {
		d.log.Error("identity reload failed; the running identity is unchanged", "err", err)
	}
	res.Rotated, res.Generation = rotated, d.cust.Current().Generation
	d.events.Record(audit.ConfigChanged, "operator", d.opts.ConfigPath, audit.OutcomeSuccess, map[string]any{
		"digest": digest, "previous_digest": oldDigest, "changed": strings.Join(res.Changed, ","),
		"need_restart": strings.Join(res.NeedRestart, ","),
	})
	d.log.Info("configuration reloaded", "digest", digest, "previous_digest", oldDigest, "changed", res.Changed,
		"applied", res.Applied, "need_restart", res.NeedRestart, "generation", res.Generation)
	return res, nil
}

// reloadIdentity picks up a rotation, recovery or key destruction another process made: it writes the key
// events to the audit log (actor: who asked), then switches to a new delegation, new checkpoint signer, new
// transport bindings.
func (d *Daemon) reloadIdentity(ctx context.Context, actor string) (bool, []audit.Record, error) {
	return d.changeIdentity(ctx, actor, custody.SourceDaemon, d.cust.Reload)
}

// changeIdentity runs change (a reload, or the schedule's rotation or destruction: custody.Schedule) and
// then does what reloadIdentity describes, with records of the given source.
func (d *Daemon) changeIdentity(ctx context.Context, actor, source string, change func(context.Context) error) (bool, []audit.Record, error) {
	d.idMu.Lock()
	defer d.idMu.Unlock()
	keys := d.cust.Keys()
	before := d.cust.Current().Generation
	cerr := change(ctx)
	recs := d.events.KeyEventsFrom(keys, d.cust.Keys(), d.cust.Log(), actor, source)
	if cerr != nil && len(recs) == 0 {
		return false, nil, cerr
	}
	g := d.cust.Current().Generation
	if g == before {
		return false, recs, cerr
	}
	signer, err := d.cust.Signer(ctx)
	if err != nil {
		return false, recs, err
	}
	d.mu.Lock()
	d.ownLog = d.cust.Log()
	d.mu.Unlock()
	if err := d.audit.SetSigner(signer, g); err != nil {
		return false, recs, err
	}
	if _, err := d.dm.SetIdentity(ctx, signer, d.cust.State()); err != nil {
		return false, recs, err
	}
	for _, ts := range d.transports {
		if err := ts.t.Rebind(ctx); err != nil {
			d.log.Warn("transport binding not renewed after the rotation", "transport", ts.cfg.Name, "err", err)
		}
	}
	// The old generation's operational keys are wiped: every session re-authenticates now, which also
	// hands each peer the longer key event log.
	n := d.mgr.reauthenticateAll()
	d.log.Info("identity reloaded", "generation", g, "previous", before, "sessions_reauthenticating", n)
	return true, recs, cerr
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

// sessionFailed accounts for a session a verified peer ended with a protocol failure (agent/events).
func (d *Daemon) sessionFailed(peer, transport string, err error) {
	d.events.SessionFailed(peer, transport, err)
}

// observer receives the plugin supervisors' events (host.Observer).
type observer struct{ d *Daemon }

// PluginRestarted implements host.Observer: audit, metric, and re-dial every target at once.
func (o observer) PluginRestarted(ev host.RestartEvent) {
	o.d.mgr.wakeAll()
	o.d.events.PluginRestarted(ev, func() *events.Plugin {
		ts := o.d.transport(ev.Transport)
		if ts == nil {
			return nil
		}
		prot := ts.t.Sandbox()
		return &events.Plugin{Path: ts.cfg.Plugin, SHA256: ts.cfg.SHA256, Sandbox: sandboxGauges(prot), SandboxText: prot.String()}
	})
}

// PeerRefused implements host.Observer.
func (o observer) PeerRefused(transport, remote string, err error) {
	o.d.events.PeerRefused(transport, remote, err)
}
