package daemon

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/sessions"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/transports/host"
)

// newManager builds the session manager (agent/sessions) over the daemon's transport plugins: each
// connection's session configuration (sessionConfig), dispatch through authz, the task engine told of
// every peer that comes up, failures to reputation and audit (sessionFailed), the redial backoff of the
// configuration in force.
func (d *Daemon) newManager(maxHandshakes int) (*manager, error) {
	m, err := sessions.New(d.ctx, sessions.Config{
		Local: d.id.String(), MaxHandshakes: maxHandshakes,
		Transport: func(name string) sessions.Dialer {
			if ts := d.transport(name); ts != nil {
				return sessions.DialerOf[*host.Conn](ts.t)
			}
			return nil
		},
		Transports:    d.transportNames,
		SessionConfig: d.sessionConfig,
		// authz: RBAC, resource policy, task quota and feedback, then the task engine.
		Dispatch: func(ctx context.Context, p *session.Peer, msg *session.Message) error {
			return d.authz.Dispatch(ctx, p, msg)
		},
		PeerUp:       func(peer string) { d.engine.PeerUp(peer) },
		SessionEnded: d.sessionFailed,
		Redial: func() backoff.Policy {
			rc := d.config().Redial
			return backoff.Policy{Min: rc.Min, Max: rc.Max}
		},
		Metrics: d.metrics, Logger: d.log,
	})
	if err != nil {
		return nil, err
	}
	return &manager{m}, nil
}

// manager is the daemon's handle on the session manager, in the control API's types.
type manager struct{ *sessions.Manager }

// peerSession is a session in use, for the control operations.
type peerSession struct {
	s *session.Session
	p *sessions.PeerSession
}

func wrap(ps *sessions.PeerSession) *peerSession {
	if ps == nil {
		return nil
	}
	return &peerSession{s: ps.Session(), p: ps}
}

func (ps *peerSession) status() api.SessionStatus { return sessionStatus(ps.p.Status()) }

func sessionStatus(s sessions.Status) api.SessionStatus {
	return api.SessionStatus{Peer: s.Peer, Transport: s.Transport, Remote: s.Remote, Role: s.Role,
		Established: s.Established, Expires: s.Expires, Generation: s.Generation, SessionID: s.SessionID}
}

func (m *manager) session(peer string) *peerSession { return wrap(m.Session(peer)) }

func (m *manager) dial(ctx context.Context, id identity.ID, a api.Address) (*peerSession, error) {
	ps, err := m.Dial(ctx, id, sessions.Address{Transport: a.Transport, Address: a.Address})
	if err != nil {
		return nil, err
	}
	return wrap(ps), nil
}

func (m *manager) addTarget(_ context.Context, id string, addrs []api.Address, source string) {
	out := make([]sessions.Address, len(addrs))
	for i, a := range addrs {
		out[i] = sessions.Address{Transport: a.Transport, Address: a.Address}
	}
	m.AddTarget(id, out, source)
}

func (m *manager) removeTarget(id string) { m.RemoveTarget(id) }
func (m *manager) wakeAll()               { m.WakeAll() }
func (m *manager) reauthenticateAll() int { return m.ReauthenticateAll() }

func (m *manager) statuses() []api.SessionStatus {
	var out []api.SessionStatus
	for _, s := range m.Statuses() {
		out = append(out, sessionStatus(s))
	}
	return out
}

func (m *manager) targetStatuses() map[string]api.TargetStatus {
	out := map[string]api.TargetStatus{}
	for id, t := range m.TargetStatuses() {
		addrs := make([]api.Address, len(t.Addresses))
		for i, a := range t.Addresses {
			addrs[i] = api.Address{Transport: a.Transport, Address: a.Address}
		}
		out[id] = api.TargetStatus{Addresses: addrs, Source: t.Source, Attempts: t.Attempts, LastError: t.LastError}
	}
	return out
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
