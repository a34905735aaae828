// Package plugins holds the transport plugins the agent runs: for each configured transport, its
// checksum checked before anything is opened (VerifyChecksums), its supervised plugin process started in
// its sandbox mode with the Landlock bind ports of its listen addresses and, for libp2p, its stable
// transport key (Set.Start), its listeners, and what the other rooms ask of them: the dialer of a
// transport (the session manager), the networks (agent/discovery), the plugin process IDs (the control
// socket refuses them), the transports' status (agentops), the re-binding after a rotation, and the
// host.Observer that turns the supervisors' events into audit records, metrics and re-dials.
//
// Its dependencies are explicit (Config): the binding authority, the record judge, the event sink, the
// metrics, the directory of transport keys. It holds no session and no identity key.
package plugins

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"sync"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/discovery"
	"github.com/custos-agent/custos/agent/events"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// Events is where the plugins' events go (agent/events.Recorder).
type Events interface {
	Record(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any)
	PluginCrashed(ev host.CrashEvent)
	PluginStartFailed(f host.StartFailure)
	PluginRestarted(ev host.RestartEvent, plugin func() *events.Plugin)
	PeerRefused(transport, remote string, err error)
}

// Metrics receives each plugin's sandbox protections (agent/metrics.Metrics).
type Metrics interface {
	PluginSandbox(plugin string, applied map[string]bool)
}

// Config is what the plugins depend on.
type Config struct {
	// Authority binds each plugin's transport key and verifies peers' bindings (agent/bindauth).
	Authority host.BindingAuthority
	// Judge answers the plugins' questions about DHT records (agent/discovery); optional.
	Judge host.RecordJudge
	// AnswerLookups judges, at every start of the libp2p plugin's process, whether its DHT answers other
	// agents' lookups (server mode) or only asks (client mode): self.lookup.answer (discover_peers) of
	// agent/authz (ADR 0094 amendment). Nil: server mode, as before.
	AnswerLookups func(ctx context.Context) bool
	// KeyDir holds the stable transport keys (libp2p: <KeyDir>/libp2p.key, ADR 0070).
	KeyDir string
	// Events and Metrics receive the plugins' starts, stops, restarts and refused peers.
	Events  Events
	Metrics Metrics
	// OnRestart runs when a plugin restarted (the session manager re-dials every target at once).
	OnRestart func()
	// SandboxProbe, when set, replaces the kernel probe of the sandbox (tests).
	SandboxProbe func() sandbox.Kernel
	Logger       *slog.Logger
}

// Set is the agent's running transport plugins, by transport name.
type Set struct {
	cfg Config
	mu  sync.RWMutex
	ts  map[string]*Transport
}

// Transport is one running plugin and its listeners.
type Transport struct {
	Config    config.TransportConfig
	T         *host.Transport
	Listeners []*host.Listener
}

// New returns an empty set; Start adds each transport.
func New(cfg Config) *Set {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Set{cfg: cfg, ts: map[string]*Transport{}}
}

// VerifyChecksums checks every configured plugin file against its transports[].sha256: a wrong checksum
// must stop the start before anything is opened, naming the file.
func VerifyChecksums(ts []config.TransportConfig) error {
	for _, t := range ts {
		sum, err := host.FileSHA256(t.Plugin)
		if err != nil {
			return fmt.Errorf("transport %s: plugin %s: %w", t.Name, t.Plugin, err)
		}
		if sum != t.SHA256 {
			return fmt.Errorf("transport %s: plugin %s: %w: the file's SHA-256 is %s, the configuration says %s (reinstall the plugin or update transports[].sha256)",
				t.Name, t.Plugin, host.ErrChecksum, sum, t.SHA256)
		}
	}
	return nil
}

// Start launches the plugin of tc (supervised until run ends) and listens on its addresses (ctx bounds
// the start). It writes the plugin.started audit record and the sandbox metric.
func (s *Set) Start(ctx, run context.Context, tc config.TransportConfig) error {
	log := s.cfg.Logger
	mode, err := sandbox.ParseMode(tc.Sandbox)
	if err != nil {
		return fmt.Errorf("transport %s: %w", tc.Name, err)
	}
	if mode == sandbox.Off {
		log.Error("transport plugin sandbox is OFF: the plugin runs unconfined, as the agent's uid, and can reach the home, the control socket and the agent's memory",
			"transport", tc.Name, "plugin", tc.Plugin)
	}
	var tkey ed25519.PrivateKey
	var answer func(context.Context) bool
	if tc.Name == "libp2p" { // a stable peer ID, so /p2p/ addresses survive plugin restarts (ADR 0070)
		if tkey, err = host.LoadTransportKey(filepath.Join(s.cfg.KeyDir, tc.Name+".key")); err != nil {
			return fmt.Errorf("transport %s: %w", tc.Name, err)
		}
		answer = s.cfg.AnswerLookups // the transport with a DHT (the others have none to run in either mode)
	}
	t, err := host.Start(run, host.Config{
		Name: tc.Name, Path: tc.Plugin, SHA256: tc.SHA256, Options: tc.Options, Authority: s.cfg.Authority,
		Observer: observer{s}, Logger: log, Sandbox: mode, User: tc.User, BindPorts: BindPorts(tc),
		SandboxProbe: s.cfg.SandboxProbe, TransportKey: tkey, Judge: s.cfg.Judge, AnswerLookups: answer,
	})
	if err != nil {
		return fmt.Errorf("transport %s: plugin %s: %w", tc.Name, tc.Plugin, err)
	}
	ts := &Transport{Config: tc, T: t}
	s.mu.Lock()
	s.ts[tc.Name] = ts
	s.mu.Unlock()
	prot := t.Sandbox()
	s.cfg.Metrics.PluginSandbox(tc.Name, SandboxGauges(prot))
	if mode == sandbox.BestEffort {
		for _, p := range sandbox.All() {
			if !prot.Has(p) && p != sandbox.UIDDrop {
				log.Warn("transport plugin runs without a sandbox protection the kernel lacks", "transport", tc.Name, "protection", p)
			}
		}
	}
	s.cfg.Events.Record(audit.PluginStarted, "agent", tc.Name, audit.OutcomeSuccess, map[string]any{"path": tc.Plugin, "sha256": tc.SHA256, "pid": t.PID(),
		"sandbox": prot.String(), "sandbox_mode": string(mode)})
	for _, addr := range tc.Listen {
		l, err := t.Listen(ctx, addr)
		if err != nil {
			return fmt.Errorf("transport %s: listen on %s: %w", tc.Name, addr, err)
		}
		s.mu.Lock()
		ts.Listeners = append(ts.Listeners, l)
		s.mu.Unlock()
		log.Info("listening", "transport", tc.Name, "addrs", l.Addrs())
	}
	return nil
}

// Get is the running transport of that name, or nil.
func (s *Set) Get(name string) *Transport {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.ts[name]
}

// Update replaces the binary of a running transport's plugin with tc.Plugin, pinned by tc.SHA256 (a
// configuration reload that changed only those two fields of the transport): host.Transport.Update
// checks the file, restarts that plugin alone on it (listeners re-opened, sessions re-dialled; audited
// as plugin.updated), or starts the previous binary again when the new one does not start. The running
// configuration of the transport changes only when the new binary runs.
func (s *Set) Update(ctx context.Context, tc config.TransportConfig) error {
	ts := s.Get(tc.Name)
	if ts == nil {
		return fmt.Errorf("transport %s is not running", tc.Name)
	}
	if err := ts.T.Update(ctx, tc.Plugin, tc.SHA256); err != nil {
		return fmt.Errorf("transport %s: plugin %s: %w", tc.Name, tc.Plugin, err)
	}
	s.mu.Lock()
	if cur := s.ts[tc.Name]; cur == ts {
		next := *ts // readers holding the old entry keep a consistent one
		next.Config.Plugin, next.Config.SHA256 = tc.Plugin, tc.SHA256
		s.ts[tc.Name] = &next
	}
	s.mu.Unlock()
	return nil
}

// ApplyUpdates updates (Update) each transport whose entry changed from old to cur only in plugin and
// sha256 (config.PluginUpdates, a configuration reload), and stops at the first failure.
func (s *Set) ApplyUpdates(ctx context.Context, old, cur *config.Config) error {
	for _, tc := range config.PluginUpdates(old, cur) {
		if err := s.Update(ctx, tc); err != nil {
			return err
		}
	}
	return nil
}

// Has reports whether the agent runs that transport.
func (s *Set) Has(name string) bool { return s.Get(name) != nil }

// Names are the running transports, sorted.
func (s *Set) Names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []string(nil)
	for n := range s.ts {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// each calls f for every transport in name order.
func (s *Set) each(f func(*Transport)) {
	for _, n := range s.Names() {
		if ts := s.Get(n); ts != nil {
			f(ts)
		}
	}
}

// Listeners calls serve for every listener with its transport's name (the session manager accepts on it).
func (s *Set) Listeners(serve func(transport string, l *host.Listener)) {
	s.each(func(ts *Transport) {
		s.mu.RLock()
		ls := append([]*host.Listener(nil), ts.Listeners...)
		s.mu.RUnlock()
		for _, l := range ls {
			serve(ts.Config.Name, l)
		}
	})
}

// Networks are the transports and their listeners, for agent/discovery.
func (s *Set) Networks() []discovery.Network {
	var out []discovery.Network
	s.each(func(ts *Transport) {
		n := discovery.Network{T: ts.T}
		s.mu.RLock()
		for _, l := range ts.Listeners {
			n.Listeners = append(n.Listeners, l)
		}
		s.mu.RUnlock()
		out = append(out, n)
	})
	return out
}

// PIDs are the live plugin processes: the control socket refuses them and their descendants
// (control.RefusePluginProcesses).
func (s *Set) PIDs() []int {
	var out []int
	s.each(func(ts *Transport) {
		if pid := ts.T.PID(); pid > 0 {
			out = append(out, pid)
		}
	})
	return out
}

// Statuses are the transports with their plugin processes and listen addresses (agent status).
func (s *Set) Statuses() []api.TransportStatus {
	var out []api.TransportStatus
	s.each(func(ts *Transport) {
		st := api.TransportStatus{Name: ts.Config.Name, Plugin: ts.Config.Plugin, SHA256: ts.Config.SHA256, PID: ts.T.PID(), Running: ts.T.PID() != 0, Restarts: ts.T.Restarts()}
		st.SandboxDetail = ts.T.Sandbox()
		st.Sandbox = st.SandboxDetail.String()
		st.DHTMode = ts.T.DHTMode()
		s.mu.RLock()
		for _, l := range ts.Listeners {
			st.Listen = append(st.Listen, l.Addrs()...)
		}
		s.mu.RUnlock()
		out = append(out, st)
	})
	return out
}

// Rebind renews every plugin's transport binding (after a rotation); a failure is logged, not fatal.
func (s *Set) Rebind(ctx context.Context) {
	s.each(func(ts *Transport) {
		if err := ts.T.Rebind(ctx); err != nil {
			s.cfg.Logger.Warn("transport binding not renewed after the rotation", "transport", ts.Config.Name, "err", err)
		}
	})
}

// Drain starts the drain: no plugin is restarted from now on (host.Transport.Drain, ADR 0088) and no
// connection is accepted.
func (s *Set) Drain() {
	s.each(func(ts *Transport) {
		ts.T.Drain()
		s.mu.RLock()
		ls := append([]*host.Listener(nil), ts.Listeners...)
		s.mu.RUnlock()
		for _, l := range ls {
			_ = l.Close()
		}
	})
}

// Close stops every plugin, in name order, writing plugin.stopped for each.
func (s *Set) Close() error {
	var errs []error
	s.each(func(ts *Transport) {
		name := ts.Config.Name
		if err := ts.T.Close(); err != nil {
			errs = append(errs, fmt.Errorf("transport %s: %w", name, err))
		}
		s.cfg.Events.Record(audit.PluginStopped, "agent", name, audit.OutcomeSuccess, map[string]any{"path": ts.Config.Plugin, "sha256": ts.Config.SHA256})
	})
	return errors.Join(errs...)
}

// SandboxGauges is the metric value of each protection.
func SandboxGauges(p sandbox.Protections) map[string]bool {
	m := map[string]bool{}
	for _, n := range sandbox.All() {
		m[n] = p.Has(n)
	}
	return m
}

// BindPorts are the TCP ports a tcp or ws plugin may bind (its listen addresses; none when it only
// dials); nil (no Landlock network rule) for other transports or an address without a numeric port.
func BindPorts(tc config.TransportConfig) []uint16 {
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

// observer receives the plugin supervisors' events (host.Observer).
type observer struct{ s *Set }

// PluginCrashed implements host.Observer: audited when it happens (plugin.crashed).
func (o observer) PluginCrashed(ev host.CrashEvent) { o.s.cfg.Events.PluginCrashed(ev) }

// PluginStartFailed implements host.Observer: each refused or failed launch is audited.
func (o observer) PluginStartFailed(f host.StartFailure) { o.s.cfg.Events.PluginStartFailed(f) }

// PluginRestarted implements host.Observer: audit, metric, and re-dial every target at once.
func (o observer) PluginRestarted(ev host.RestartEvent) {
	if o.s.cfg.OnRestart != nil {
		o.s.cfg.OnRestart()
	}
	o.s.cfg.Events.PluginRestarted(ev, func() *events.Plugin {
		ts := o.s.Get(ev.Transport)
		if ts == nil {
			return nil
		}
		prot := ts.T.Sandbox()
		return &events.Plugin{Path: ts.Config.Plugin, SHA256: ts.Config.SHA256, Sandbox: SandboxGauges(prot), SandboxText: prot.String()}
	})
}

// PeerRefused implements host.Observer.
func (o observer) PeerRefused(transport, remote string, err error) {
	o.s.cfg.Events.PeerRefused(transport, remote, err)
}
