package daemon

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/puzzle"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/session/sessiontest"
	"github.com/custos-agent/custos/reason"
)

func startBare(t *testing.T) *Daemon {
	t.Helper()
	ctx := context.Background()
	home, cust := testHome(t)
	cfgPath := filepath.Join(home, "agent.yaml")
	cfg, digest := writeConfig(t, cfgPath, "metrics: {disabled: true}\n")
	d, err := Start(ctx, Options{Home: home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(ctx) })
	return d
}

// handshakeDaemons runs a real handshake between two daemons' session configurations over a pipe: a
// initiates, b accepts on a connection whose transport binding named pinned.
func handshakeDaemons(t *testing.T, a, b *Daemon, pinned string) (errA, errB error) {
	t.Helper()
	c1, c2 := net.Pipe()
	ch := make(chan error, 1)
	go func() {
		s, err := session.Accept(context.Background(), sessiontest.NewNetConn(c2, 0), b.sessionConfig("test", "pipe", pinned))
		if s != nil {
			s.Close()
		}
		ch <- err
	}()
	s, errA := session.Initiate(context.Background(), sessiontest.NewNetConn(c1, 0), a.sessionConfig("test", "pipe", ""), b.ID())
	if s != nil {
		s.Close()
	}
	return errA, <-ch
}

// TestValidatorTransportPin: the daemon's validator refuses a session whose peer authenticated as another
// agent than the one the transport binding pinned (issue 21 item 4), and admits the pinned one.
func TestValidatorTransportPin(t *testing.T) {
	a, b, c := startBare(t), startBare(t), startBare(t)
	errA, errB := handshakeDaemons(t, a, b, c.ID().String()) // the transport pinned c, a handshakes
	if !errors.Is(errB, reason.ValidatorRefused) || !strings.Contains(errB.Error(), "the transport binding named "+c.ID().String()) {
		t.Fatalf("responder: %v, want validator_refused naming the pinned agent", errB)
	}
	if !errors.Is(errA, reason.PeerAlert) || !strings.Contains(errA.Error(), string(reason.ValidatorRefused)) {
		t.Fatalf("initiator: %v", errA)
	}
	if errA, errB := handshakeDaemons(t, a, b, a.ID().String()); errA != nil || errB != nil {
		t.Fatalf("pinned agent: %v / %v", errA, errB)
	}
}

// badSolver answers every puzzle with a well-formed nonce that does not do the work (the first that fails
// the hash test): only the work check refuses it.
type badSolver struct{}

func (badSolver) Solve(_ context.Context, p, bind []byte) ([]byte, error) {
	c, err := puzzle.DecodeChallenge(p)
	if err != nil {
		return nil, err
	}
	n := uint64(0)
	for puzzle.Check(bind, c, n) {
		n++
	}
	return puzzle.EncodeSolution(n), nil
}

// TestEarlyAdmission: initiators that do not solve the daemon's admission puzzle are refused with
// bad_puzzle by the early check, and none of their key event logs is stored (issue 20 finding 5).
func TestEarlyAdmission(t *testing.T) {
	b := startBare(t)
	for range 3 {
		a := startBare(t)
		c1, c2 := net.Pipe()
		ch := make(chan error, 1)
		go func() {
			_, err := session.Accept(context.Background(), sessiontest.NewNetConn(c2, 0), b.sessionConfig("test", "pipe", ""))
			ch <- err
		}()
		cfg := a.sessionConfig("test", "pipe", "")
		cfg.Solver = badSolver{}
		if _, err := session.Initiate(context.Background(), sessiontest.NewNetConn(c1, 0), cfg, b.ID()); err == nil {
			t.Fatal("an initiator with a wrong solution was admitted")
		}
		if err := <-ch; !errors.Is(err, reason.ValidatorRefused) || !strings.Contains(err.Error(), authz.RefusalBadPuzzle) {
			t.Fatalf("responder: %v, want validator_refused %s", err, authz.RefusalBadPuzzle)
		}
	}
	if ids, err := b.peers.IDs(); err != nil || len(ids) != 0 {
		t.Fatalf("the responder stored the logs of %d initiators that failed the puzzle (%v)", len(ids), err)
	}
}
