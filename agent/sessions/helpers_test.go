package sessions_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/sessions"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/transports/memory"
)

var bg = context.Background()

// node is one agent on an in-memory network: a software identity, the real handshake and session code,
// a session manager, and a listener.
type node struct {
	id         *agenttest.Identity
	m          *sessions.Manager
	ep         *memory.Transport
	l          *memory.Listener
	addr       string
	scfg       session.Config
	mu         sync.Mutex
	refuse     error           // when set, the validator refuses every peer with it
	validating func()          // when set, the validator calls it first (outside n.mu)
	evs        []session.Event // session events (handshakes, refusals)
	waits      []time.Duration // what the manager asked After for
	after      func(d time.Duration) <-chan time.Time
}

type nodeOpts struct {
	maxHandshakes    int
	handshakeTimeout time.Duration
	redial           backoff.Policy
	// instantWaits makes the manager's waits (redial backoff) fire at once, recorded in node.waits.
	instantWaits bool
	// reauthParallel is Config.ReauthParallel.
	reauthParallel int
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newNode(t *testing.T, net *memory.Network, o nodeOpts) *node {
	t.Helper()
	if o.maxHandshakes == 0 {
		o.maxHandshakes = 8
	}
	if o.handshakeTimeout == 0 {
		o.handshakeTimeout = 10 * time.Second
	}
	if o.redial == (backoff.Policy{}) {
		o.redial = backoff.Policy{Min: 10 * time.Millisecond, Max: 200 * time.Millisecond}
	}
	id := agenttest.NewIdentity(t, keystore.Ed25519)
	dm, err := delegation.NewManager(bg, delegation.Config{Identity: id.Current(), State: id.State, Mode: delegation.Delegated, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := peers.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	n := &node{id: id, ep: net.Endpoint(id.ID().String())}
	n.scfg = session.Config{Delegations: dm, Peers: pc, Replay: replay.New(replay.Config{}), Logger: quiet(),
		KeyLog: func() *identity.Log { return &id.Log }, HandshakeTimeout: o.handshakeTimeout}
	n.after = time.After
	if o.instantWaits {
		n.after = func(d time.Duration) <-chan time.Time {
			n.mu.Lock()
			n.waits = append(n.waits, d)
			n.mu.Unlock()
			c := make(chan time.Time, 1)
			c <- time.Now()
			return c
		}
	}
	ctx, cancel := context.WithCancel(bg)
	n.m, err = sessions.New(ctx, sessions.Config{
		Local: id.ID().String(), MaxHandshakes: o.maxHandshakes, ReauthParallel: o.reauthParallel,
		Transport: func(name string) sessions.Dialer {
			if name != memory.Name {
				return nil
			}
			return sessions.DialerOf[*memory.Conn](n.ep)
		},
		Transports:    func() []string { return []string{memory.Name} },
		SessionConfig: n.sessionConfig,
		Dispatch:      func(context.Context, *session.Peer, *session.Message) error { return nil },
		Redial:        func() backoff.Policy { return o.redial },
		Logger:        quiet(),
		After:         func(d time.Duration) <-chan time.Time { return n.after(d) },
	})
	if err != nil {
		t.Fatal(err)
	}
	n.l, err = n.ep.Listen(bg, "")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = n.l.Addrs()[0]
	lctx, lcancel := context.WithCancel(ctx)
	n.m.Serve(lctx, memory.Name, sessions.ListenerOf[*memory.Conn](n.l))
	t.Cleanup(func() {
		n.m.CloseAll()
		lcancel()
		_ = n.l.Close()
		cancel()
		n.m.Wait()
		pc.Close()
		dm.Close()
	})
	return n
}

// sessionConfig is the configuration of one connection: the transport's pin enforced, and the node's
// refusal when set.
func (n *node) sessionConfig(transport, remote, pinned string) *session.Config {
	c := n.scfg
	c.Validator = session.ValidatorFunc(func(_ context.Context, p *session.Peer) error {
		n.mu.Lock()
		v := n.validating
		n.mu.Unlock()
		if v != nil {
			v()
		}
		if pinned != "" && p.ID.String() != pinned {
			return fmt.Errorf("the binding named %s but the handshake authenticated %s", pinned, p.ID)
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.refuse
	})
	c.OnEvent = func(ev session.Event) {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.evs = append(n.evs, ev)
	}
	return &c
}

func (n *node) ID() string { return n.id.ID().String() }

func (n *node) address() []sessions.Address {
	return []sessions.Address{{Transport: memory.Name, Address: n.addr}}
}

func (n *node) events() []session.Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]session.Event(nil), n.evs...)
}

func (n *node) recordedWaits() []time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]time.Duration(nil), n.waits...)
}

// eventually waits (at most 20 s) until cond holds, re-checking at every change of any node's session
// set and every 10 ms; it fails the test with what() otherwise.
func eventually(t *testing.T, what func() string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not reached within 20s: %s", what())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pair returns two nodes ordered by agent ID: lo's ID sorts first (lo initiates the canonical session).
func pair(t *testing.T, net *memory.Network, o nodeOpts) (lo, hi *node) {
	a, b := newNode(t, net, o), newNode(t, net, o)
	if a.ID() < b.ID() {
		return a, b
	}
	return b, a
}

func sessionID(n *node, peer *node) string {
	if ps := n.m.Session(peer.ID()); ps != nil {
		return ps.Status().SessionID
	}
	return ""
}

var errTest = errors.New("injected")
