// Package sessions is the session manager: it keeps one authenticated session (agent/session) per peer
// agent over whatever transports it is given. It runs the handshake on every inbound connection (at most
// MaxHandshakes at once) and every outbound one, keeps the canonical session when two agents dial each
// other at once, re-dials the peers it targets with backoff (internal/backoff) whenever their session is
// down, and hands every received message to its dispatcher.
//
// Its dependencies are explicit (Config): the transports are a small Dial/Accept seam (Dialer, Listener)
// that the plugin host (transports/host) and the in-memory transport (transports/memory) both satisfy;
// the session configuration of each connection, the message dispatch, and the audit and metrics sinks
// are functions and interfaces the composition root (agent/daemon) supplies.
package sessions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/metrics"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/backoff"
)

// Conn is a connection a transport delivers: frames to and from one peer whose transport binding the
// transport verified (PeerAgentID is the agent it binds, "" when the transport names none).
type Conn interface {
	session.FrameConn
	RemoteAddr() string
	PeerAgentID() string
}

// Dialer opens connections over one transport. expect is the agent ID the peer's binding must name.
type Dialer interface {
	Dial(ctx context.Context, addr, expect string) (Conn, error)
}

// Listener delivers the inbound connections of one transport until it is closed.
type Listener interface {
	Accept(ctx context.Context) (Conn, error)
}

// DialerOf adapts a transport whose Dial returns its own connection type (*host.Conn, *memory.Conn).
func DialerOf[C Conn](t interface {
	Dial(ctx context.Context, addr, expect string) (C, error)
}) Dialer {
	return dialerOf[C]{t}
}

type dialerOf[C Conn] struct {
	t interface {
		Dial(ctx context.Context, addr, expect string) (C, error)
	}
}

func (d dialerOf[C]) Dial(ctx context.Context, addr, expect string) (Conn, error) {
	c, err := d.t.Dial(ctx, addr, expect)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenerOf adapts a listener whose Accept returns its own connection type.
func ListenerOf[C Conn](l interface {
	Accept(ctx context.Context) (C, error)
}) Listener {
	return listenerOf[C]{l}
}

type listenerOf[C Conn] struct {
	l interface {
		Accept(ctx context.Context) (C, error)
	}
}

func (l listenerOf[C]) Accept(ctx context.Context) (Conn, error) {
	c, err := l.l.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Metrics is the metrics sink (agent/metrics.Metrics).
type Metrics interface {
	Message(transport, direction string, n int)
	SessionOpened(transport string)
	SessionClosed(transport string)
}

// Address is one way to reach a peer: a configured transport's name and an address on it.
type Address struct {
	Transport string
	Address   string
}

// Config is what the manager needs from the agent around it.
type Config struct {
	// Local is this agent's ID (the side of the simultaneous-open rule).
	Local string
	// MaxHandshakes bounds the inbound handshakes in progress; a connection beyond it is closed at once.
	MaxHandshakes int
	// Transport returns the dialer of the configured transport name, nil when there is none; Transports
	// lists the configured names (for the error that names them).
	Transport  func(name string) Dialer
	Transports func() []string
	// SessionConfig is the session configuration of one connection over transport from remote;
	// pinned is the agent ID the transport binding named ("" when none).
	SessionConfig func(transport, remote, pinned string) *session.Config
	// Dispatch handles one received message of a session's verified peer.
	Dispatch func(ctx context.Context, p *session.Peer, msg *session.Message) error
	// PeerUp is told of every session established; SessionEnded of every session that ended, with its
	// error (nil for a clean close). Either may be nil.
	PeerUp       func(peer string)
	SessionEnded func(peer, transport string, err error)
	// Redial is the backoff between dial attempts to a target whose session is down; read before each
	// delay, so a configuration reload applies.
	Redial func() backoff.Policy
	// DialTimeout bounds one dial and its handshake by the redialler (default 30 s).
	DialTimeout time.Duration
	// ReauthParallel bounds the re-authentications ReauthenticateAll runs at once (default
	// DefaultReauthParallel).
	ReauthParallel int
	Metrics        Metrics
	Logger         *slog.Logger
	// Now is the clock of the session records (default time.Now); After the redialler's and the accept
	// loop's waits (default time.After).
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
}

// PeerSession is one established session with its transport facts.
type PeerSession struct {
	s           *session.Session
	peer        string
	transport   string
	remote      string
	established time.Time

	draining atomic.Bool // a goroutine hands its messages to the dispatcher (drain)
	ended    sync.Once   // the end of the session handled (ended)
	stopCtx  func() bool // the AfterFunc that closes the session when the agent's context ends
}

// Session is the authenticated session.
func (ps *PeerSession) Session() *session.Session { return ps.s }

// Close closes the session (telling the peer); the manager then forgets it and its target re-dials.
func (ps *PeerSession) Close() error { return ps.s.Close() }

// Status describes ps.
func (ps *PeerSession) Status() Status {
	p := ps.s.Peer()
	return Status{Peer: ps.peer, Transport: ps.transport, Remote: ps.remote, Role: ps.s.Role().String(),
		Established: ps.established, Expires: ps.s.Expires().UTC(), Generation: p.State.Generation,
		SessionID: fmt.Sprintf("%x", ps.s.ID())}
}

// Status describes one session.
type Status struct {
	Peer, Transport, Remote, Role string
	Established, Expires          time.Time
	Generation                    uint64
	SessionID                     string
}

// TargetStatus describes one target: where it is dialled, why it is kept, and how dialling went.
type TargetStatus struct {
	Addresses []Address
	Source    string
	Attempts  int
	LastError string
}

// canonical reports whether ps is the session both sides keep when two exist between the same agents:
// the one initiated by the agent whose ID sorts first. Both sides compute the same answer.
func (ps *PeerSession) canonical(local string) bool {
	initiator := ps.peer
	if ps.s.Role() == session.Initiator {
		initiator = local
	}
	return initiator == min(local, ps.peer)
}

// target is a peer this agent keeps a session with: it dials whenever there is none, with backoff.
type target struct {
	id     string
	mu     sync.Mutex
	addrs  []Address
	source string // "bootstrap" or "connect"
	wake   chan struct{}
	cancel context.CancelFunc

	lastErr  string
	attempts int
}

func (t *target) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// Manager keeps one session per peer: it runs the handshake on every inbound and outbound connection,
// resolves duplicates, re-dials targets whose session ended, and routes messages to the dispatcher.
type Manager struct {
	cfg      Config
	ctx      context.Context // the agent's: sessions and re-authentications run under it
	local    string
	mu       sync.Mutex
	sessions map[string]*PeerSession // the session in use, by peer agent ID
	live     map[*PeerSession]bool   // every running session (duplicates included until closed)
	targets  map[string]*target
	closing  bool
	hsSem    chan struct{} // bounds inbound handshakes
	wg       sync.WaitGroup
	changed  chan struct{} // closed and replaced whenever the session set changes
}

// New makes a manager whose sessions run until ctx ends or CloseAll.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	switch {
	case cfg.Local == "":
		return nil, errors.New("sessions: the local agent ID is required")
	case cfg.Transport == nil || cfg.SessionConfig == nil || cfg.Dispatch == nil || cfg.Redial == nil:
		return nil, errors.New("sessions: Transport, SessionConfig, Dispatch and Redial are required")
	case cfg.MaxHandshakes < 1:
		return nil, fmt.Errorf("sessions: at least one inbound handshake must be allowed (MaxHandshakes is %d)", cfg.MaxHandshakes)
	}
	if cfg.Transports == nil {
		cfg.Transports = func() []string { return nil }
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	if cfg.ReauthParallel <= 0 {
		cfg.ReauthParallel = DefaultReauthParallel
	}
	if cfg.Metrics == nil {
		cfg.Metrics = noMetrics{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	return &Manager{cfg: cfg, ctx: ctx, local: cfg.Local, sessions: map[string]*PeerSession{}, live: map[*PeerSession]bool{},
		targets: map[string]*target{}, hsSem: make(chan struct{}, cfg.MaxHandshakes), changed: make(chan struct{})}, nil
}

type noMetrics struct{}

func (noMetrics) Message(string, string, int) {}
func (noMetrics) SessionOpened(string)        {}
func (noMetrics) SessionClosed(string)        {}

func (m *Manager) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// Changed returns a channel closed at the next change of the session set.
func (m *Manager) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// HandshakeLoad is the share of the inbound handshake slots in use, in [0, 1].
func (m *Manager) HandshakeLoad() float64 {
	return float64(len(m.hsSem)) / float64(cap(m.hsSem))
}

// Session returns the session in use with peer, or nil.
func (m *Manager) Session(peer string) *PeerSession {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.sessions[peer]
	if ps != nil && ps.s.Err() != nil {
		return nil
	}
	return ps
}

// Send implements tasks.Sender.
func (m *Manager) Send(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
	ps := m.Session(peer)
	if ps == nil {
		return fmt.Errorf("%w %s", tasks.ErrNoSession, peer)
	}
	if _, err := ps.s.Send(ctx, t, payload); err != nil {
		return fmt.Errorf("send %s to %s: %w", t, peer, err)
	}
	m.cfg.Metrics.Message(ps.transport, metrics.DirectionOut, len(payload))
	return nil
}

// Serve runs handshakes on the connections l delivers over transport until ctx ends (then l is the
// caller's to close). Wait waits for it.
func (m *Manager) Serve(ctx context.Context, transport string, l Listener) {
	m.wg.Add(1)
	go m.acceptLoop(ctx, transport, l)
}

// acceptLoop runs handshakes on the connections a listener delivers until it is closed.
func (m *Manager) acceptLoop(ctx context.Context, transport string, l Listener) {
	defer m.wg.Done()
	for {
		c, err := l.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.cfg.Logger.Debug("accept", "transport", transport, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-m.cfg.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case m.hsSem <- struct{}{}:
		default:
			m.cfg.Logger.Warn("too many handshakes in progress; dropping an inbound connection", "transport", transport, "remote", c.RemoteAddr())
			_ = c.Close()
			continue
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer func() { <-m.hsSem }()
			s, err := session.Accept(ctx, c, m.cfg.SessionConfig(transport, c.RemoteAddr(), c.PeerAgentID()))
			if err != nil {
				return // reported through the session's OnEvent
			}
			m.register(s, transport, c.RemoteAddr())
		}()
	}
}

// Dial connects to id at addr and runs the handshake as initiator. It returns the session in use with
// id afterwards: the new one, or the one kept instead of it (simultaneous open).
func (m *Manager) Dial(ctx context.Context, id identity.ID, addr Address) (*PeerSession, error) {
	t := m.cfg.Transport(addr.Transport)
	if t == nil {
		return nil, fmt.Errorf("transport %s is not configured (configured: %v)", addr.Transport, m.cfg.Transports())
	}
	c, err := t.Dial(ctx, addr.Address, id.String())
	if err != nil {
		return nil, err // a refused binding is reported by the transport's observer (audit, metric)
	}
	s, err := session.Initiate(ctx, c, m.cfg.SessionConfig(addr.Transport, c.RemoteAddr(), c.PeerAgentID()), id)
	if err != nil {
		return nil, err
	}
	return m.register(s, addr.Transport, c.RemoteAddr()), nil
}

// register makes s the session with its peer unless a preferable one exists (then s is closed and the
// existing one returned).
func (m *Manager) register(s *session.Session, transport, remote string) *PeerSession {
	ps := &PeerSession{s: s, peer: s.Peer().ID.String(), transport: transport, remote: remote, established: m.cfg.Now().UTC()}
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		_ = s.Close()
		return ps
	}
	cur := m.sessions[ps.peer]
	var drop *PeerSession
	switch {
	case cur == nil || cur.s.Err() != nil:
	case ps.canonical(m.local) && !cur.canonical(m.local):
		drop = cur
	default:
		m.mu.Unlock()
		m.cfg.Logger.Info("duplicate session closed", "peer", ps.peer, "transport", transport, "kept", cur.transport)
		_ = s.Close()
		return cur
	}
	m.sessions[ps.peer] = ps
	m.live[ps] = true
	m.notifyLocked()
	t := m.targets[ps.peer]
	m.mu.Unlock()
	if drop != nil {
		m.cfg.Logger.Info("duplicate session replaced", "peer", ps.peer)
		go func() { _ = drop.s.Close() }()
	}
	if t != nil {
		t.poke()
	}
	m.cfg.Metrics.SessionOpened(transport)
	m.cfg.Logger.Info("session established", "peer", ps.peer, "transport", transport, "remote", remote, "role", s.Role())
	// Received messages go to the dispatcher from a goroutine that runs only while there are some (drain),
	// not one parked per session (issue 19). The session runs under the agent's context, not a dial's.
	m.wg.Add(1) // done when the end of the session has been handled
	ps.stopCtx = context.AfterFunc(m.ctx, func() { _ = ps.s.Close() })
	ps.s.Notify(func() { m.kick(ps) })
	m.kick(ps) // what arrived before Notify
	if m.cfg.PeerUp != nil {
		m.cfg.PeerUp(ps.peer)
	}
	return ps
}

// kick makes sure a goroutine drains ps's messages (and handles its end).
func (m *Manager) kick(ps *PeerSession) {
	if ps.draining.CompareAndSwap(false, true) {
		go m.drain(ps)
	}
}

// drain hands every queued message of ps to the dispatcher, in order, then ends; when the session has
// ended it handles that instead of ending (and no other drain starts).
func (m *Manager) drain(ps *PeerSession) {
	for {
		m.deliverQueued(ps)
		if ps.s.Err() != nil {
			m.deliverQueued(ps) // what was queued as it ended
			ps.ended.Do(func() { m.ended(ps) })
			return // draining stays set
		}
		ps.draining.Store(false)
		// A message or the end that came after the checks above found draining set: take it over,
		// unless another drain already did.
		if ps.s.Queued() == 0 && ps.s.Err() == nil || !ps.draining.CompareAndSwap(false, true) {
			return
		}
	}
}

func (m *Manager) deliverQueued(ps *PeerSession) {
	for {
		msg, ok := ps.s.TryReceive()
		if !ok {
			return
		}
		m.cfg.Metrics.Message(ps.transport, metrics.DirectionIn, len(msg.Payload))
		if err := m.cfg.Dispatch(m.ctx, ps.s.Peer(), msg); err != nil {
			m.cfg.Logger.Info("message not handled", "peer", ps.peer, "type", msg.Envelope.Header.MessageType, "err", err)
		}
	}
}

// ended forgets ps once its session has ended, reports it, and has its target re-dial.
func (m *Manager) ended(ps *PeerSession) {
	defer m.wg.Done()
	ps.stopCtx()
	_ = ps.s.Close()
	m.mu.Lock()
	delete(m.live, ps)
	if m.sessions[ps.peer] == ps {
		delete(m.sessions, ps.peer)
	}
	m.notifyLocked()
	t := m.targets[ps.peer]
	m.mu.Unlock()
	m.cfg.Metrics.SessionClosed(ps.transport)
	m.cfg.Logger.Info("session ended", "peer", ps.peer, "transport", ps.transport, "reason", ps.s.Err())
	if m.cfg.SessionEnded != nil {
		m.cfg.SessionEnded(ps.peer, ps.transport, ps.s.Err())
	}
	if t != nil {
		t.poke() // its target re-dials now
	}
}

// AddTarget keeps a session with id over addrs (replacing the addresses of an existing target). source
// says why ("bootstrap" outlives "connect").
func (m *Manager) AddTarget(id string, addrs []Address, source string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return
	}
	if t, ok := m.targets[id]; ok {
		t.mu.Lock()
		t.addrs = addrs
		if source == "bootstrap" {
			t.source = source
		}
		t.mu.Unlock()
		t.poke()
		return
	}
	tctx, cancel := context.WithCancel(m.ctx)
	t := &target{id: id, addrs: addrs, source: source, wake: make(chan struct{}, 1), cancel: cancel}
	m.targets[id] = t
	m.wg.Add(1)
	go m.dialLoop(tctx, t)
}

// RemoveTarget stops re-dialling id (its session, if any, stays up).
func (m *Manager) RemoveTarget(id string) {
	m.mu.Lock()
	t := m.targets[id]
	delete(m.targets, id)
	m.mu.Unlock()
	if t != nil {
		t.cancel()
	}
}

// WakeAll makes every target dial now (a plugin was restarted: its connections are gone).
func (m *Manager) WakeAll() {
	m.mu.Lock()
	ts := make([]*target, 0, len(m.targets))
	for _, t := range m.targets {
		ts = append(ts, t)
	}
	m.mu.Unlock()
	for _, t := range ts {
		t.poke()
	}
}

func (m *Manager) dialLoop(ctx context.Context, t *target) {
	defer m.wg.Done()
	id, err := identity.ParseID(t.id)
	if err != nil {
		m.cfg.Logger.Error("dial target", "peer", t.id, "err", err)
		return
	}
	failures := 0 // consecutive failed attempts: the backoff step
	for ctx.Err() == nil {
		if ps := m.Session(t.id); ps != nil {
			select {
			case <-ps.s.Done():
			case <-t.wake:
			case <-ctx.Done():
				return
			}
			continue
		}
		t.mu.Lock()
		addrs := append([]Address(nil), t.addrs...)
		t.mu.Unlock()
		var errs []error
		ok := false
		for _, a := range addrs {
			dctx, cancel := context.WithTimeout(ctx, m.cfg.DialTimeout)
			_, err := m.Dial(dctx, id, a)
			cancel()
			if err == nil {
				ok = true
				break
			}
			errs = append(errs, fmt.Errorf("%s %s: %w", a.Transport, a.Address, err))
		}
		t.mu.Lock()
		t.attempts++
		if ok {
			t.lastErr = ""
		} else {
			t.lastErr = errors.Join(errs...).Error()
		}
		lastErr := t.lastErr
		t.mu.Unlock()
		if ok {
			failures = 0 // a success: the next failure waits Min again
			continue
		}
		if ctx.Err() != nil {
			return
		}
		delay := m.cfg.Redial().Delay(failures)
		m.cfg.Logger.Info("peer not reachable; retrying", "peer", t.id, "in", delay, "err", lastErr)
		select {
		case <-m.cfg.After(delay):
			failures++
		case <-t.wake:
			failures = 0
		case <-ctx.Done():
			return
		}
	}
}

// CloseAll stops dialling, closes every session (telling each peer) and returns when they are closed;
// Wait then waits for the manager's goroutines.
func (m *Manager) CloseAll() {
	m.mu.Lock()
	m.closing = true
	live := make([]*PeerSession, 0, len(m.live))
	for ps := range m.live {
		live = append(live, ps)
	}
	for _, t := range m.targets {
		t.cancel()
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, ps := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ps.s.Close()
		}()
	}
	wg.Wait()
}

// Wait waits for every goroutine of the manager (after CloseAll, and after the listeners given to Serve
// are closed or their ctx ended).
func (m *Manager) Wait() { m.wg.Wait() }

// Statuses describes the sessions in use, by peer ID.
func (m *Manager) Statuses() []Status {
	m.mu.Lock()
	var out []Status
	for _, ps := range m.sessions {
		if ps.s.Err() == nil {
			out = append(out, ps.Status())
		}
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// Live is the number of running sessions, duplicates not yet closed included.
func (m *Manager) Live() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.live)
}

// TargetStatuses describes the targets, by peer ID.
func (m *Manager) TargetStatuses() map[string]TargetStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]TargetStatus{}
	for id, t := range m.targets {
		t.mu.Lock()
		out[id] = TargetStatus{Addresses: append([]Address(nil), t.addrs...), Source: t.source, Attempts: t.attempts, LastError: t.lastErr}
		t.mu.Unlock()
	}
	return out
}

// DefaultReauthParallel is how many of ReauthenticateAll's re-authentications run at once by default.
const DefaultReauthParallel = 16

// ReauthenticateAll starts a re-authentication of every session (after the local identity rotated) and
// returns how many. At most Config.ReauthParallel run at once (issue 19): thousands of handshakes started
// together on the same cores would outlast their timeout, close their sessions and re-dial them all. A
// session whose re-authentication fails is closed by the session package; targets re-dial it.
func (m *Manager) ReauthenticateAll() int {
	m.mu.Lock()
	var live []*PeerSession
	for ps := range m.live {
		live = append(live, ps)
	}
	m.mu.Unlock()
	work := make(chan *PeerSession, len(live))
	for _, ps := range live {
		work <- ps
	}
	close(work)
	for range min(m.cfg.ReauthParallel, len(live)) {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for ps := range work {
				if m.ctx.Err() != nil {
					return
				}
				ctx, cancel := context.WithTimeout(m.ctx, time.Minute)
				if err := ps.s.Reauthenticate(ctx); err != nil {
					m.cfg.Logger.Warn("re-authentication after the identity change failed", "peer", ps.peer, "err", err)
				}
				cancel()
			}
		}()
	}
	return len(live)
}
