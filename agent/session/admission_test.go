package session

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/handshake"

	"github.com/custos-agent/custos/reason"
)

// badSolver answers any puzzle wrongly: a throw-away identity that does no work.
type badSolver struct{}

func (badSolver) Solve(context.Context, []byte, []byte) ([]byte, error) {
	return []byte("no work"), nil
}

// puzzleValidator refuses an initiator whose solution does not match the test puzzler's puzzle.
var puzzleValidator = ValidatorFunc(func(_ context.Context, p *Peer) error {
	if p.Role == Initiator && string(p.Solution) != "solved:puzzle:"+string(p.Binding) {
		return errors.New("wrong puzzle solution")
	}
	return nil
})

// TestThrowAwayIdentitiesStoreNothing: N throw-away identities, each sending its key event log inline, that
// fail the responder's puzzle or sign their response wrongly leave nothing in the responder's peer cache
// (issue 12 item 3, issue 20 finding 5: the log used to be written, fsynced, before either was checked).
func TestThrowAwayIdentitiesStoreNothing(t *testing.T) {
	const n = 30
	cases := []struct {
		name  string
		setup func(t *testing.T, a *agent) (ia, ib FrameConn)
		code  reason.Code
	}{
		{"puzzle not solved", func(t *testing.T, a *agent) (FrameConn, FrameConn) {
			a.cfg.Solver = badSolver{}
			return pipePair()
		}, reason.ValidatorRefused},
		{"response signature does not verify", func(t *testing.T, a *agent) (FrameConn, FrameConn) {
			a.cfg.Solver = solver{}
			return startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 0 && n == 1 {
					return flipLast(f)
				}
				return f
			})
		}, reason.BadSignature},
		// With Config.Admit the puzzle is checked before anything the initiator sent is verified: a junk
		// inline log is not even decoded (validator_refused, not key_log_invalid).
		{"puzzle checked before the log (Admit)", func(t *testing.T, a *agent) (FrameConn, FrameConn) {
			a.cfg.Solver = badSolver{}
			return startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 0 && n == 1 {
					r, err := handshake.DecodeResponse(f)
					if err != nil {
						t.Error(err)
						return f
					}
					r.Log = []byte("not a key event log")
					return r.Encode()
				}
				return f
			})
		}, reason.ValidatorRefused},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newAgent(t)
			b.cfg.Puzzler, b.cfg.Validator = puzzler{}, puzzleValidator
			if strings.Contains(c.name, "Admit") {
				b.cfg.Admit = puzzleValidator
			}
			for range n {
				a := newAgent(t)
				a.rotate(t) // a log of two events, sent inline
				ia, ib := c.setup(t, a)
				_, _, _, errB := connect(t, a, b, ia, ib, b.ID())
				expect(t, "responder", errB, c.code, "")
			}
			if ids, err := b.peers.IDs(); err != nil || len(ids) != 0 {
				t.Fatalf("the responder stored %d key event logs of unauthenticated initiators (%v)", len(ids), err)
			}
			// An initiator that does the work is stored.
			a := newAgent(t)
			a.cfg.Solver = solver{}
			mustConnect(t, a, b)
			if ids, _ := b.peers.IDs(); len(ids) != 1 || ids[0] != a.ID().String() {
				t.Fatalf("after one admitted initiator the cache holds %v", ids)
			}
		})
	}
}
