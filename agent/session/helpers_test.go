package session

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/handshake"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

var bg = context.Background()

// agent is a test agent: identity, delegation manager, peer cache on disk, replay cache, config.
type agent struct {
	id     *agenttest.Identity
	mgr    *delegation.Manager
	peers  *peers.Cache
	replay *replay.Cache
	cfg    *Config
	log    *identity.Log // what KeyLog returns
	dbPath string        // the peer cache's state.db
	mu     sync.Mutex
}

type agentOpt func(*agentOptions)

type agentOptions struct {
	alg      keystore.Algorithm
	signer   keystore.Signer // identity key from a real backend
	next     keystore.Signer
	mode     delegation.Mode
	kem      suite.KEM
	mgrClock func() time.Time
	clock    func() time.Time
}

func withAlg(a keystore.Algorithm) agentOpt { return func(o *agentOptions) { o.alg = a } }
func withSigner(cur, next keystore.Signer) agentOpt {
	return func(o *agentOptions) { o.signer, o.next = cur, next }
}
func withMode(m delegation.Mode) agentOpt      { return func(o *agentOptions) { o.mode = m } }
func withKEM(k suite.KEM) agentOpt             { return func(o *agentOptions) { o.kem = k } }
func withMgrClock(c func() time.Time) agentOpt { return func(o *agentOptions) { o.mgrClock = c } }
func withClock(c func() time.Time) agentOpt    { return func(o *agentOptions) { o.clock = c } }

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newAgent(t testing.TB, opts ...agentOpt) *agent {
	t.Helper()
	o := agentOptions{alg: keystore.Ed25519, mode: delegation.Delegated, kem: suite.KEMX25519, clock: time.Now}
	for _, f := range opts {
		f(&o)
	}
	if o.mgrClock == nil {
		o.mgrClock = o.clock
	}
	var id *agenttest.Identity
	if o.signer != nil {
		id = agenttest.FromSigner(t, o.signer, o.next)
	} else {
		id = agenttest.NewIdentity(t, o.alg)
	}
	m, err := delegation.NewManager(bg, delegation.Config{Identity: id.Current(), State: id.State, Mode: o.mode, KEM: o.kem, Clock: o.mgrClock, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(t.TempDir(), "state.db")
	pc, err := peers.Open(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(); m.Close() })
	a := &agent{id: id, mgr: m, peers: pc, replay: replay.New(replay.Config{Clock: o.clock}), dbPath: dbPath}
	a.log = &id.Log
	a.cfg = &Config{
		Delegations: m, Peers: pc, Replay: a.replay, Clock: o.clock, Logger: quietLogger(),
		KeyLog:           func() *identity.Log { a.mu.Lock(); defer a.mu.Unlock(); return a.log },
		HandshakeTimeout: 5 * time.Second,
	}
	return a
}

func (a *agent) ID() identity.ID { return a.id.ID() }

func (a *agent) setLog(l *identity.Log) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log = l
}

// rotate rotates the agent's identity and moves its delegations to the new key.
func (a *agent) rotate(t testing.TB) {
	t.Helper()
	a.id.Rotate(t)
	l := identity.Log{Events: append([]identity.Event{}, a.id.Log.Events...)}
	a.setLog(&l)
	if _, err := a.mgr.SetIdentity(bg, a.id.Current(), a.id.State); err != nil {
		t.Fatal(err)
	}
}

func pipePair() (FrameConn, FrameConn) {
	c1, c2 := net.Pipe()
	return NewNetConn(c1, 0), NewNetConn(c2, 0)
}

func tcpPair(t testing.TB) (FrameConn, FrameConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2 := <-ch
	if c2 == nil {
		t.Fatal("accept failed")
	}
	return NewNetConn(c1, 0), NewNetConn(c2, 0)
}

type result struct {
	s   *Session
	err error
}

// connect runs Initiate (a -> b, expecting want) and Accept concurrently.
func connect(t testing.TB, a, b *agent, ca, cb FrameConn, want identity.ID) (*Session, *Session, error, error) {
	t.Helper()
	rc := make(chan result, 1)
	go func() {
		s, err := Accept(bg, cb, b.cfg)
		rc <- result{s, err}
	}()
	sa, errA := Initiate(bg, ca, a.cfg, want)
	r := <-rc
	if sa != nil {
		t.Cleanup(func() { sa.Close() })
	}
	if r.s != nil {
		t.Cleanup(func() { r.s.Close() })
	}
	return sa, r.s, errA, r.err
}

func mustConnect(t testing.TB, a, b *agent) (*Session, *Session) {
	t.Helper()
	ca, cb := pipePair()
	sa, sb, errA, errB := connect(t, a, b, ca, cb, b.ID())
	if errA != nil || errB != nil {
		t.Fatalf("handshake: initiator %v; responder %v", errA, errB)
	}
	return sa, sb
}

// proxy relays frames between two connections; modify may change or drop (nil) each frame.
// dir is 0 for initiator->responder, 1 for responder->initiator; n counts frames per direction.
type proxy struct {
	modify func(dir, n int, frame []byte) []byte
	wg     sync.WaitGroup
}

func startProxy(t testing.TB, modify func(dir, n int, frame []byte) []byte) (initiatorSide, responderSide FrameConn) {
	i1, i2 := pipePair() // initiator <-> proxy
	r1, r2 := pipePair() // proxy <-> responder
	p := &proxy{modify: modify}
	// Like a TCP middlebox: when one side closes, what it sent before still arrives, then the close.
	relay := func(dir int, from, to FrameConn) {
		defer p.wg.Done()
		for n := 0; ; n++ {
			f, err := from.ReadFrame(bg)
			if err != nil {
				to.Close()
				return
			}
			if p.modify != nil {
				if f = p.modify(dir, n, f); f == nil {
					continue
				}
			}
			if err := to.WriteFrame(bg, f); err != nil {
				return
			}
		}
	}
	p.wg.Add(2)
	go relay(0, i2, r1)
	go relay(1, r1, i2)
	t.Cleanup(func() { i1.Close(); r2.Close(); p.wg.Wait() })
	return i1, r2
}

// alterFirstEnvelope is a proxy function (startProxy) that applies change to the initiator's first envelope
// (the frame after hello and response) and passes every other frame on.
func alterFirstEnvelope(t *testing.T, change func(e *envelope.Envelope)) func(dir, n int, f []byte) []byte {
	return func(dir, n int, f []byte) []byte {
		if dir != 0 || n != 2 {
			return f
		}
		e, err := envelope.DecodeBinary(f[1:])
		if err != nil {
			t.Error(err)
			return f
		}
		change(e)
		return append([]byte{handshake.FrameEnvelope}, e.EncodeBinary()...)
	}
}
