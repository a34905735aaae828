package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/metrics"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/identity"
	retry "github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/transports/host"
)

// peerSession is one established session with its transport facts.
type peerSession struct {
	s           *session.Session
	peer        string
	transport   string
	remote      string
	established time.Time
}

// canonical reports whether ps is the session both sides keep when two exist between the same agents:
// the one initiated by the agent whose ID sorts first. Both sides compute the same answer.
func (ps *peerSession) canonical(local string) bool {
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
	addrs  []api.Address
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

// manager keeps one session per peer: it runs the handshake on every inbound and outbound connection,
// resolves duplicates, re-dials targets whose session ended, and routes messages to the task engine.
type manager struct {
	d        *Daemon
	local    string
	mu       sync.Mutex
	sessions map[string]*peerSession // the session in use, by peer agent ID
	live     map[*peerSession]bool   // every running session (duplicates included until closed)
	targets  map[string]*target
	closing  bool
	hsSem    chan struct{} // bounds inbound handshakes
	wg       sync.WaitGroup
	changed  chan struct{} // closed and replaced whenever the session set changes
}

func newManager(d *Daemon, maxHandshakes int) *manager {
	return &manager{d: d, local: d.id.String(), sessions: map[string]*peerSession{}, live: map[*peerSession]bool{},
		targets: map[string]*target{}, hsSem: make(chan struct{}, maxHandshakes), changed: make(chan struct{})}
}

func (m *manager) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// session returns the session in use with peer, or nil.
func (m *manager) session(peer string) *peerSession {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.sessions[peer]
	if ps != nil && ps.s.Err() != nil {
		return nil
	}
	return ps
}

// Send implements tasks.Sender.
func (m *manager) Send(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
	ps := m.session(peer)
	if ps == nil {
		return fmt.Errorf("%w %s", tasks.ErrNoSession, peer)
	}
	if _, err := ps.s.Send(ctx, t, payload); err != nil {
		return fmt.Errorf("send %s to %s: %w", t, peer, err)
	}
	m.d.metrics.Message(ps.transport, metrics.DirectionOut, len(payload))
	return nil
}

// acceptLoop runs handshakes on the connections a listener delivers until it is closed.
func (m *manager) acceptLoop(ctx context.Context, transport string, l *host.Listener) {
	defer m.wg.Done()
	for {
		c, err := l.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.d.log.Debug("accept", "transport", transport, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case m.hsSem <- struct{}{}:
		default:
			m.d.log.Warn("too many handshakes in progress; dropping an inbound connection", "transport", transport, "remote", c.RemoteAddr())
			_ = c.Close()
			continue
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer func() { <-m.hsSem }()
			s, err := session.Accept(ctx, c, m.d.sessionConfig(transport, c.RemoteAddr(), c.PeerAgentID()))
			if err != nil {
				return // reported through the session's OnEvent
			}
			m.register(s, transport, c.RemoteAddr())
		}()
	}
}

// dial connects to id at addr and runs the handshake as initiator.
func (m *manager) dial(ctx context.Context, id identity.ID, addr api.Address) (*peerSession, error) {
	t := m.d.transport(addr.Transport)
	if t == nil {
		return nil, fmt.Errorf("transport %s is not configured (configured: %v)", addr.Transport, m.d.transportNames())
	}
	c, err := t.t.Dial(ctx, addr.Address, id.String())
	if err != nil {
		return nil, err // a refused binding is reported by the host's observer (audit, metric)
	}
	s, err := session.Initiate(ctx, c, m.d.sessionConfig(addr.Transport, c.RemoteAddr(), c.PeerAgentID()), id)
	if err != nil {
		return nil, err
	}
	return m.register(s, addr.Transport, c.RemoteAddr()), nil
}

// register makes s the session with its peer unless a preferable one exists (then s is closed and the
// existing one returned).
func (m *manager) register(s *session.Session, transport, remote string) *peerSession {
	ps := &peerSession{s: s, peer: s.Peer().ID.String(), transport: transport, remote: remote, established: time.Now().UTC()}
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		_ = s.Close()
		return ps
	}
	cur := m.sessions[ps.peer]
	var drop *peerSession
	switch {
	case cur == nil || cur.s.Err() != nil:
	case ps.canonical(m.local) && !cur.canonical(m.local):
		drop = cur
	default:
		m.mu.Unlock()
		m.d.log.Info("duplicate session closed", "peer", ps.peer, "transport", transport, "kept", cur.transport)
		_ = s.Close()
		return cur
	}
	m.sessions[ps.peer] = ps
	m.live[ps] = true
	m.notifyLocked()
	t := m.targets[ps.peer]
	m.mu.Unlock()
	if drop != nil {
		m.d.log.Info("duplicate session replaced", "peer", ps.peer)
		go func() { _ = drop.s.Close() }()
	}
	if t != nil {
		t.poke()
	}
	m.d.metrics.SessionOpened(transport)
	m.d.log.Info("session established", "peer", ps.peer, "transport", transport, "remote", remote, "role", s.Role())
	m.wg.Add(1)
	go m.receive(m.d.ctx, ps) // not ctx: that may be a dial's, which ends when the dial returns
	m.d.engine.PeerUp(ps.peer)
	return ps
}

// receive hands every message of ps to the task engine until the session ends.
func (m *manager) receive(ctx context.Context, ps *peerSession) {
	defer m.wg.Done()
	for {
		msg, err := ps.s.Receive(ctx)
		if err != nil {
			break
		}
		m.d.metrics.Message(ps.transport, metrics.DirectionIn, len(msg.Payload))
		// authz.go: RBAC, resource policy, task quota and feedback, then the task engine.
		if err := m.d.authz.Dispatch(ctx, ps.s.Peer(), msg); err != nil {
			m.d.log.Info("message not handled", "peer", ps.peer, "type", msg.Envelope.Header.MessageType, "err", err)
		}
	}
	_ = ps.s.Close()
	m.mu.Lock()
	delete(m.live, ps)
	if m.sessions[ps.peer] == ps {
		delete(m.sessions, ps.peer)
	}
	m.notifyLocked()
	t := m.targets[ps.peer]
	m.mu.Unlock()
	m.d.metrics.SessionClosed(ps.transport)
	m.d.log.Info("session ended", "peer", ps.peer, "transport", ps.transport, "reason", ps.s.Err())
	m.d.sessionFailed(ps.peer, ps.transport, ps.s.Err())
	if t != nil {
		t.poke()
	}
}

// addTarget keeps a session with id over addrs (replacing the addresses of an existing target).
func (m *manager) addTarget(ctx context.Context, id string, addrs []api.Address, source string) {
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
	tctx, cancel := context.WithCancel(ctx)
	t := &target{id: id, addrs: addrs, source: source, wake: make(chan struct{}, 1), cancel: cancel}
	m.targets[id] = t
	m.wg.Add(1)
	go m.dialLoop(tctx, t)
}

// removeTarget stops re-dialling id (its session, if any, stays up).
func (m *manager) removeTarget(id string) {
	m.mu.Lock()
	t := m.targets[id]
	delete(m.targets, id)
	m.mu.Unlock()
	if t != nil {
		t.cancel()
	}
}

// wakeAll makes every target dial now (a plugin was restarted: its connections are gone).
func (m *manager) wakeAll() {
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

func (m *manager) dialLoop(ctx context.Context, t *target) {
	defer m.wg.Done()
	id, err := identity.ParseID(t.id)
	if err != nil {
		m.d.log.Error("dial target", "peer", t.id, "err", err)
		return
	}
	backoff := m.d.config().Redial.Min
	for ctx.Err() == nil {
		if ps := m.session(t.id); ps != nil {
			select {
			case <-ps.s.Done():
			case <-t.wake:
			case <-ctx.Done():
				return
			}
			continue
		}
		t.mu.Lock()
		addrs := append([]api.Address(nil), t.addrs...)
		t.mu.Unlock()
		var errs []error
		ok := false
		for _, a := range addrs {
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := m.dial(dctx, id, a)
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
		t.mu.Unlock()
		rc := m.d.config().Redial
		if ok {
			backoff = rc.Min
			continue
		}
		if ctx.Err() != nil {
			return
		}
		m.d.log.Info("peer not reachable; retrying", "peer", t.id, "in", backoff, "err", t.lastErr)
		delay := retry.Jitter(backoff)
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
			backoff = min(backoff*2, rc.Max)
		case <-t.wake:
			timer.Stop()
			backoff = rc.Min
		case <-ctx.Done():
			timer.Stop()
			return
		}
	}
}

// closeAll stops dialling, closes every session (telling each peer) and waits for the goroutines.
func (m *manager) closeAll() {
	m.mu.Lock()
	m.closing = true
	live := make([]*peerSession, 0, len(m.live))
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

func (ps *peerSession) status() api.SessionStatus {
	p := ps.s.Peer()
	return api.SessionStatus{Peer: ps.peer, Transport: ps.transport, Remote: ps.remote, Role: ps.s.Role().String(),
		Established: ps.established, Expires: ps.s.Expires().UTC(), Generation: p.State.Generation,
		SessionID: fmt.Sprintf("%x", ps.s.ID())}
}

func (m *manager) statuses() []api.SessionStatus {
	m.mu.Lock()
	var out []api.SessionStatus
	for _, ps := range m.sessions {
		if ps.s.Err() == nil {
			out = append(out, ps.status())
		}
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

func (m *manager) targetStatuses() map[string]api.TargetStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]api.TargetStatus{}
	for id, t := range m.targets {
		t.mu.Lock()
		out[id] = api.TargetStatus{Addresses: append([]api.Address(nil), t.addrs...), Source: t.source, Attempts: t.attempts, LastError: t.lastErr}
		t.mu.Unlock()
	}
	return out
}

// reauthenticateAll starts a re-authentication of every session (after the local identity rotated) and
// returns how many. A session whose re-authentication fails is closed by the session package; targets
// re-dial it.
func (m *manager) reauthenticateAll() int {
	m.mu.Lock()
	var live []*peerSession
	for ps := range m.live {
		live = append(live, ps)
	}
	m.mu.Unlock()
	for _, ps := range live {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			ctx, cancel := context.WithTimeout(m.d.ctx, time.Minute)
			defer cancel()
			if err := ps.s.Reauthenticate(ctx); err != nil {
				m.d.log.Warn("re-authentication after the identity change failed", "peer", ps.peer, "err", err)
			}
		}()
	}
	return len(live)
}

// admitEarly makes the refusals a responder can make before it verifies (or stores) anything an initiator
// sent (session.Config.Admit): the admission puzzle and a Blocked agent ID (as claimed; a Blocked claim is
// refused whoever makes it). authz.validate checks both again, with the verified peer. Issue 12 item 3.
func (d *Daemon) admitEarly(p *session.Peer, early *earlyAdmission) error {
	z := d.authz
	if p.Role == session.Initiator && z.Admission() != nil {
		if err := z.Admission().Verify(p.Puzzle, p.Binding, p.Solution); err != nil {
			z.CountDenial(authz.RefusalBadPuzzle, true)
			return authz.Refuse(authz.RefusalBadPuzzle, fmt.Errorf("admission puzzle: %w", err))
		}
		early.set(p)
	}
	if err := d.rep.Admit(p.ID); err != nil {
		z.CountDenial(authz.RefusalBlocked, true)
		return authz.Refuse(authz.RefusalBlocked, err)
	}
	return nil
}

// earlyAdmission remembers, for one connection, the puzzle admitEarly verified (solutions are
// single-use), so that the validator's authz checks do not verify it a second time.
type earlyAdmission struct {
	mu               sync.Mutex
	puzzle, solution []byte
	binding          []byte
}

func (e *earlyAdmission) set(p *session.Peer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.puzzle, e.binding, e.solution = p.Puzzle, p.Binding, p.Solution
}

// strip returns p without its puzzle when it is exactly the one verified early (else p unchanged, and the
// puzzle is verified by authz.validate).
func (e *earlyAdmission) strip(p *session.Peer) *session.Peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p.Role != session.Initiator || len(p.Puzzle) == 0 || !bytes.Equal(p.Puzzle, e.puzzle) ||
		!bytes.Equal(p.Binding, e.binding) || !bytes.Equal(p.Solution, e.solution) {
		return p
	}
	e.puzzle, e.binding, e.solution = nil, nil, nil
	q := *p
	q.Puzzle = nil
	return &q
}
