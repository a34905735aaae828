package authz

// The session configuration of each connection lives here, not in agent/sessions: it is authorization's
// checks (the pinned agent, the early admission, Validate) put on a session, and agent/authz already
// depends on agent/session for them; agent/sessions stays ignorant of authorization (it calls the
// function it is given, sessions.Config.SessionConfig), so the arrow runs sessions ← daemon → authz.

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/custos-agent/custos/agent/puzzle"
	"github.com/custos-agent/custos/agent/session"
)

// SessionConfigs returns the session configuration of each connection (sessions.Config.SessionConfig):
// base(transport, remote) (the settings in force: keys, caches, timeouts, logger, events) with a
// validator that requires the handshake's peer to be the agent the transport binding named (pinned, when
// set), runs Validate (puzzle, Blocked peers, grants, connection policy), then then (when not nil); the
// early refusals of an initiator (AdmitEarly: puzzle, Blocked) before anything it sent is verified or
// stored; the admission puzzles asked of initiators, the solver of the puzzles asked of this agent, and
// the grants it presents.
func (z *Authz) SessionConfigs(base func(transport, remote string) *session.Config, then session.Validator) func(transport, remote, pinned string) *session.Config {
	return func(transport, remote, pinned string) *session.Config {
		c := base(transport, remote)
		// A puzzle solution is single-use: once AdmitEarly has verified this connection's, Validate is
		// shown the peer without it (a puzzle verified once, by the early check).
		early := &EarlyAdmission{}
		c.Validator = session.ValidatorFunc(func(ctx context.Context, p *session.Peer) error {
			if pinned != "" && p.ID.String() != pinned {
				return fmt.Errorf("the transport binding named %s but the handshake authenticated %s", pinned, p.ID)
			}
			if err := z.Validate(ctx, early.Strip(p)); err != nil {
				return err
			}
			if then != nil {
				return then.Validate(ctx, p)
			}
			return nil
		})
		// Before the initiator's log, delegation and signature are verified: its puzzle and Blocked.
		c.Admit = session.ValidatorFunc(func(_ context.Context, p *session.Peer) error { return z.AdmitEarly(p, early) })
		c.Puzzler, c.Solver, c.Grants = z.Puzzler(), puzzle.Solver{}, z.Presentable()
		return c
	}
}

// AdmitEarly makes the refusals a responder can make before it verifies (or stores) anything an
// initiator sent (session.Config.Admit): the admission puzzle and a Blocked agent ID (as claimed; a
// Blocked claim is refused whoever makes it). Validate checks both again, with the verified peer. The
// puzzle verified is remembered in early.
func (z *Authz) AdmitEarly(p *session.Peer, early *EarlyAdmission) error {
	if p.Role == session.Initiator && z.adm != nil {
		if err := z.adm.Verify(p.Puzzle, p.Binding, p.Solution); err != nil {
			z.CountDenial(RefusalBadPuzzle, true)
			return Refuse(RefusalBadPuzzle, fmt.Errorf("admission puzzle: %w", err))
		}
		early.set(p)
	}
	if err := z.deps.Reputation.Admit(p.ID); err != nil {
		z.CountDenial(RefusalBlocked, true)
		return Refuse(RefusalBlocked, err)
	}
	return nil
}

// EarlyAdmission remembers, for one connection, the puzzle AdmitEarly verified (solutions are
// single-use), so that Validate does not verify it a second time. The zero value is ready.
type EarlyAdmission struct {
	mu               sync.Mutex
	puzzle, solution []byte
	binding          []byte
}

func (e *EarlyAdmission) set(p *session.Peer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.puzzle, e.binding, e.solution = p.Puzzle, p.Binding, p.Solution
}

// Strip returns p without its puzzle when it is exactly the one verified early, once (else p unchanged,
// and the puzzle is verified by Validate).
func (e *EarlyAdmission) Strip(p *session.Peer) *session.Peer {
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
