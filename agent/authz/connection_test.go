package authz

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/puzzle"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/keystore"
)

// TestSessionConfigs checks each connection's session configuration without a daemon: the base settings
// kept, the pinned agent, the early admission (puzzle, Blocked) and the single verification of a puzzle
// solution, Validate, then the further validator.
func TestSessionConfigs(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "")
	z := f.z
	peer := agenttest.NewIdentity(t, keystore.Ed25519)
	blocked := agenttest.NewIdentity(t, keystore.Ed25519)
	if err := f.rep.Block(ctx, blocked.ID()); err != nil {
		t.Fatal(err)
	}
	bind := []byte("both IDs and nonces")
	solved := func() *session.Peer {
		p := &session.Peer{ID: peer.ID(), Role: session.Initiator, Binding: bind}
		p.Puzzle = mustPuzzle(t, z, peer.ID(), bind)
		var err error
		if p.Solution, err = (puzzle.Solver{}).Solve(ctx, p.Puzzle, bind); err != nil {
			t.Fatal(err)
		}
		return p
	}
	thenErr := errors.New("the further validator refuses")
	base := func(transport, remote string) *session.Config {
		return &session.Config{HandshakeTimeout: 7 * time.Second, Logger: nil}
	}
	cases := []struct {
		name      string
		pinned    string
		then      session.Validator
		peer      func() *session.Peer
		early     bool   // run Admit first, as the session does for an initiator
		wantAdmit string // refusal code of Admit ("" accepted)
		wantErr   string // substring of the validator's error ("" accepted)
	}{
		{"solved puzzle, admitted early, verified once", "", nil, solved, true, "", ""},
		{"solved puzzle without the early check is verified by Validate", "", nil, solved, false, "", ""},
		{"unsolved puzzle refused early", "", nil, func() *session.Peer {
			p := solved()
			p.Solution = []byte{1}
			return p
		}, true, RefusalBadPuzzle, ""},
		{"blocked claim refused early", "", nil, func() *session.Peer {
			return &session.Peer{ID: blocked.ID(), Role: session.Responder}
		}, true, RefusalBlocked, ""},
		{"pinned to another agent", blocked.ID().String(), nil, solved, false, "", "the transport binding named " + blocked.ID().String()},
		{"pinned to the peer", peer.ID().String(), nil, solved, false, "", ""},
		{"the further validator runs last", "", session.ValidatorFunc(func(context.Context, *session.Peer) error { return thenErr }), solved, true, "", thenErr.Error()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := z.SessionConfigs(base, c.then)("test", "192.0.2.1:7400", c.pinned)
			if cfg.HandshakeTimeout != 7*time.Second || cfg.Puzzler == nil || cfg.Solver == nil {
				t.Fatalf("base settings or puzzles lost: %+v", cfg)
			}
			p := c.peer()
			if c.early {
				err := cfg.Admit.Validate(ctx, p)
				if RefusalOf(err) != c.wantAdmit || (c.wantAdmit == "") != (err == nil) {
					t.Fatalf("Admit = %v (%q), want %q", err, RefusalOf(err), c.wantAdmit)
				}
				if err != nil {
					return
				}
			}
			err := cfg.Validator.Validate(ctx, p)
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("Validator = %v, want %q", err, c.wantErr)
			}
		})
	}
}

// A puzzle verified early is stripped once: the same solution shown again (another connection, or a
// replay on this one) is verified again.
func TestEarlyAdmissionStripsOnce(t *testing.T) {
	p := &session.Peer{Role: session.Initiator, Puzzle: []byte("p"), Binding: []byte("b"), Solution: []byte("s")}
	var e EarlyAdmission
	if q := e.Strip(p); q != p {
		t.Fatal("a puzzle not verified early was stripped")
	}
	e.set(p)
	if q := e.Strip(p); q == p || q.Puzzle != nil || p.Puzzle == nil {
		t.Fatal("the puzzle verified early was not stripped (or p was changed)")
	}
	if q := e.Strip(p); q != p {
		t.Fatal("a puzzle was stripped twice")
	}
	e.set(p)
	other := *p
	other.Solution = []byte("t")
	if q := e.Strip(&other); q != &other {
		t.Fatal("another solution was stripped")
	}
	resp := *p
	resp.Role = session.Responder
	e.set(p)
	if q := e.Strip(&resp); q != &resp {
		t.Fatal("a responder's puzzle was stripped")
	}
}
