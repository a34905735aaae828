package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// exchange sends n messages each way and checks they arrive intact, in order, verified.
func exchange(t *testing.T, a, b *Session, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, pair := range [][2]*Session{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range n {
				if _, err := from.Send(bg, envelope.TaskRequest, []byte(fmt.Sprintf("msg %d from %s", i, from.LocalID()))); err != nil {
					errs <- fmt.Errorf("send %d: %w", i, err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := range n {
				ctx, cancel := context.WithTimeout(bg, 5*time.Second)
				m, err := to.Receive(ctx)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("receive %d: %w", i, err)
					return
				}
				want := fmt.Sprintf("msg %d from %s", i, from.LocalID())
				if string(m.Payload) != want || m.Envelope.Header.SenderID != from.LocalID() || m.Envelope.Header.RecipientID != to.LocalID() {
					errs <- fmt.Errorf("got %q from %s, want %q", m.Payload, m.Envelope.Header.SenderID, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestHandshakeAndEnvelopes(t *testing.T) {
	cases := []struct {
		name     string
		a, b     []agentOpt
		hybrid   bool
		tcp      bool
		wantMode delegation.Mode
	}{
		{name: "ed25519 pipe"},
		{name: "ed25519 tcp", tcp: true},
		{name: "p256 vs ed25519 hybrid tcp", a: []agentOpt{withAlg(keystore.P256)}, hybrid: true, tcp: true},
		{name: "strict p256 with x-wing", a: []agentOpt{withAlg(keystore.P256), withMode(delegation.Strict), withKEM(suite.KEMXWing)}, b: []agentOpt{withMode(delegation.Strict)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := newAgent(t, c.a...), newAgent(t, c.b...)
			a.cfg.Hybrid = c.hybrid
			a.cfg.Grants = []byte("grant-bytes")
			logsSent := 0
			countLogs := func(dir, n int, f []byte) []byte {
				if (dir == 1 && n == 0 && challengeHasLog(t, f)) || (dir == 0 && n == 1 && responseHasLog(t, f)) {
					logsSent++
				}
				return f
			}
			var ca, cb FrameConn
			if c.tcp {
				ca, cb = tcpPair(t)
				logsSent = 2 // not observed over TCP
			} else {
				ca, cb = startProxy(t, countLogs)
			}
			sa, sb, errA, errB := connect(t, a, b, ca, cb, b.ID())
			if errA != nil || errB != nil {
				t.Fatalf("initiator: %v; responder: %v", errA, errB)
			}
			if !sa.Peer().ID.Equal(b.ID()) || !sb.Peer().ID.Equal(a.ID()) {
				t.Fatal("peers do not know each other")
			}
			if !bytes.Equal(sa.ID(), sb.ID()) {
				t.Fatal("different session IDs")
			}
			if string(sb.Peer().Grants) != "grant-bytes" {
				t.Fatalf("grants: %q", sb.Peer().Grants)
			}
			if c.tcp && sb.Peer().RemoteAddr == "" {
				t.Fatal("no remote address over TCP")
			}
			if op := sb.Peer().Delegation.OpKey; (a.mgr.Mode() == delegation.Strict) != op.Equal(a.id.Current().Public()) {
				t.Fatal("strict mode and operational key disagree")
			}
			exchange(t, sa, sb, 20)
			if logsSent != 2 {
				t.Fatalf("first handshake: %d key event logs sent, want 2 (neither side knew the other)", logsSent)
			}
			// The peers cached each other: a second handshake sends no logs.
			logsSent = 0
			ia, ib := startProxy(t, countLogs)
			s2a, s2b, errA, errB := connect(t, a, b, ia, ib, b.ID())
			if errA != nil || errB != nil {
				t.Fatalf("second handshake: %v / %v", errA, errB)
			}
			if logsSent != 0 {
				t.Fatalf("%d logs sent although both sides had them cached", logsSent)
			}
			exchange(t, s2a, s2b, 3)
		})
	}
}

func challengeHasLog(t *testing.T, f []byte) bool {
	c, err := decodeChallengeForTest(f)
	if err != nil {
		t.Errorf("proxy: %v", err)
		return false
	}
	return len(c.Log) > 0
}

func responseHasLog(t *testing.T, f []byte) bool {
	r, err := decodeResponseForTest(f)
	if err != nil {
		t.Errorf("proxy: %v", err)
		return false
	}
	return len(r.Log) > 0
}

func TestReauthentication(t *testing.T) {
	a, b := newAgent(t), newAgent(t)
	sa, sb := mustConnect(t, a, b)
	first := sa.ID()
	// Traffic keeps flowing while the initiator re-authenticates several times.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 3; i++ {
			if err := sa.Reauthenticate(bg); err != nil {
				t.Errorf("reauth %d: %v", i, err)
			}
		}
		// The responder can ask for one too.
		if err := sb.Reauthenticate(bg); err != nil {
			t.Errorf("responder-requested reauth: %v", err)
		}
		close(stop)
	}()
	exchange(t, sa, sb, 200)
	<-stop
	wg.Wait()
	// The responder-requested re-authentication returns on the responder once it switched; the initiator
	// switches when the "established" frame reaches it, a moment later.
	for deadline := time.Now().Add(5 * time.Second); !bytes.Equal(sa.ID(), sb.ID()) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if bytes.Equal(sa.ID(), first) || !bytes.Equal(sa.ID(), sb.ID()) {
		t.Fatal("re-authentication did not move both sides to new keys")
	}
	if sa.epoch != 4 {
		t.Fatalf("epoch %d after 4 re-authentications", sa.epoch)
	}
	// After a rotation, re-authentication carries the new key event log and delegation.
	a.rotate(t)
	if err := sa.Reauthenticate(bg); err != nil {
		t.Fatal(err)
	}
	if sb.Peer().State.Generation != 1 || !sb.Peer().State.Current.Equal(a.id.Current().Public()) {
		t.Fatalf("responder sees generation %d after the initiator rotated", sb.Peer().State.Generation)
	}
	exchange(t, sa, sb, 5)

	// A re-authentication as another agent is refused (issue 21 item 3). Each layer on its own: the
	// re-hello's same-agents check, then (a responder whose re-hello check let it through) the same-peer
	// check on the verified response.
	t.Run("as another agent: the re-hello", func(t *testing.T) {
		a, b, c := newAgent(t), newAgent(t), newAgent(t)
		sa, sb := mustConnect(t, a, b)
		a.setLog(&c.id.Log) // a's process now speaks as c (its keys and its log)
		if _, err := a.mgr.SetIdentity(bg, c.id.Current(), c.id.State); err != nil {
			t.Fatal(err)
		}
		err := sa.Reauthenticate(bg)
		<-sb.Done()
		expect(t, "responder", sb.Err(), reason.WrongRecipient, "between the same two agents")
		expectAlert(t, "initiator", err, reason.WrongRecipient)
	})
	t.Run("as another agent: the verified response", func(t *testing.T) {
		a, b, c := newAgent(t), newAgent(t), newAgent(t)
		_, sb := mustConnect(t, a, b)
		// c's initiator and b's responder state as if b's re-hello check had admitted c's hello.
		in, hello, err := newInitiator(bg, mustCheck(t, c.cfg), b.ID())
		if err != nil {
			t.Fatal(err)
		}
		r := &responder{cfg: sb.cfg}
		ch, err := r.onHello(bg, hello)
		if err != nil {
			t.Fatal(err)
		}
		r.reauthOf = sb.Peer()
		resp, err := in.onChallenge(bg, ch)
		if err != nil {
			t.Fatal(err)
		}
		sb.mu.Lock()
		sb.pendingR = r
		sb.mu.Unlock()
		err = sb.onReResponse(bg, resp)
		expect(t, "responder", err, reason.WrongRecipient, "re-authenticated as")
	})
}

func TestAutomaticReauthAndExpiry(t *testing.T) {
	a, b := newAgent(t), newAgent(t)
	a.cfg.ReauthInterval, b.cfg.ReauthInterval = time.Second, time.Second
	sa, sb := mustConnect(t, a, b)
	first := sa.ID()
	deadline := time.Now().Add(5 * time.Second)
	for bytes.Equal(sa.ID(), first) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if bytes.Equal(sa.ID(), first) {
		t.Fatal("no automatic re-authentication within 5 s at a 1 s interval")
	}
	exchange(t, sa, sb, 3)

	// Without re-authentication the session closes when it expires (interval + grace).
	c, d := newAgent(t), newAgent(t)
	c.cfg.ReauthInterval, d.cfg.ReauthInterval = time.Second, time.Second
	c.cfg.ReauthGrace, d.cfg.ReauthGrace = time.Second, time.Second
	c.cfg.noAutoReauth = true
	sc, sd := mustConnect(t, c, d)
	r := result{s: sd}
	select {
	case <-r.s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the session did not expire")
	}
	if !errors.Is(r.s.Err(), reason.SessionExpired) && !errors.Is(r.s.Err(), reason.PeerAlert) {
		t.Fatalf("expired session: %v", r.s.Err())
	}
	<-sc.Done()
	if !errors.Is(sc.Err(), reason.SessionExpired) && !errors.Is(sc.Err(), reason.PeerAlert) {
		t.Fatalf("initiator: %v", sc.Err())
	}
	if !errors.Is(r.s.Err(), reason.SessionExpired) && !errors.Is(sc.Err(), reason.SessionExpired) {
		t.Fatalf("neither side reports session_expired: %v / %v", r.s.Err(), sc.Err())
	}
}

func TestValidatorAndEvents(t *testing.T) {
	a, b := newAgent(t), newAgent(t)
	var mu sync.Mutex
	var events []Event
	b.cfg.OnEvent = func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }
	b.cfg.Validator = ValidatorFunc(func(_ context.Context, p *Peer) error {
		if !p.ID.Equal(a.ID()) || p.State.Generation != 0 || p.Delegation == nil {
			return errors.New("validator saw an unverified peer")
		}
		if string(p.Solution) != "solved:puzzle:"+string(p.Binding) || len(p.Binding) == 0 {
			return errors.New("wrong puzzle solution")
		}
		return errors.New("blocked by policy")
	})
	b.cfg.Puzzler = puzzler{}
	a.cfg.Solver = solver{}
	ca, cb := pipePair()
	_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
	if !errors.Is(errB, reason.ValidatorRefused) || !strings.Contains(errB.Error(), "blocked by policy") {
		t.Fatalf("responder: %v", errB)
	}
	if !errors.Is(errA, reason.PeerAlert) || !strings.Contains(errA.Error(), "validator_refused") {
		t.Fatalf("initiator: %v", errA)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0].Kind != "handshake" || events[0].Code != reason.ValidatorRefused || events[0].Peer != a.ID().String() {
		t.Fatalf("events: %+v", events)
	}
}

type puzzler struct{}

func (puzzler) Puzzle(_ context.Context, _ string, bind []byte) ([]byte, error) {
	return append([]byte("puzzle:"), bind...), nil
}

type solver struct{}

func (solver) Solve(_ context.Context, p, bind []byte) ([]byte, error) {
	if !bytes.HasSuffix(p, bind) {
		return nil, errors.New("the puzzle is not bound to this handshake")
	}
	return append([]byte("solved:"), p...), nil
}

// TestStoreAndForward: after one handshake each agent's peer cache holds the other's log and delegation,
// which is all a store-and-forward envelope needs (no session).
func TestStoreAndForward(t *testing.T) {
	a, b := newAgent(t), newAgent(t, withKEM(suite.KEMXWing))
	sa, sb := mustConnect(t, a, b)
	sa.Close()
	sb.Close()
	// A seals to B's delegated encryption key, found in A's peer cache.
	ds, err := a.peers.Delegations(b.ID().String())
	if err != nil || len(ds) == 0 {
		t.Fatalf("A has no delegation of B: %v", err)
	}
	ka, _ := a.mgr.Current(bg)
	e, err := envelope.SealHPKE(bg, envelope.NewHeader(a.ID().String(), b.ID().String(), envelope.TaskRequest, time.Now()),
		[]byte("queued job"), ds[0].KEM, ds[0].EncKey, ka.Signer())
	if err != nil {
		t.Fatal(err)
	}
	if e.Payload.Cipher != envelope.HPKEXWing {
		t.Fatalf("cipher %s", e.Payload.Cipher)
	}
	// Through a gateway as JSON, then opened by B with its peer cache and live keys.
	relayed, err := envelope.DecodeJSON(e.EncodeJSON())
	if err != nil {
		t.Fatal(err)
	}
	// A replay cache that has run for longer than the window (the restart barrier is behind it).
	rc := replay.New(replay.Config{Start: time.Now().Add(-time.Minute)})
	rx := &envelope.Receiver{LocalID: b.ID().String(), Resolver: b.peers, Replay: rc, Keys: func() []*suite.EncryptionKey {
		var out []*suite.EncryptionKey
		for _, k := range b.mgr.Live() {
			out = append(out, k.Encryption())
		}
		return out
	}}
	pt, err := rx.Receive(bg, relayed)
	if err != nil || string(pt) != "queued job" {
		t.Fatalf("receive: %q %v", pt, err)
	}
	if _, err := rx.Receive(bg, relayed); !errors.Is(err, reason.ReplayedMessage) {
		t.Fatalf("second delivery: %v", err)
	}
}

// TestEnvelopeSigning: each side signs its session envelopes or not as its own Config.SignEnvelopes says
// (ADR 0032); the receiver verifies a signature when there is one, and the two kinds interoperate. A
// signature stripped in transit leaves an envelope the session still authenticates (the AEAD) but that
// arrives unsigned: the stripping costs the receiver nothing it relies on.
func TestEnvelopeSigning(t *testing.T) {
	a, b := newAgent(t), newAgent(t)
	a.cfg.SignEnvelopes = true
	sa, sb := mustConnect(t, a, b)
	exchange(t, sa, sb, 20)
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	for _, c := range []struct {
		from, to *Session
		signed   bool
	}{{sa, sb, true}, {sb, sa, false}} {
		sent, err := c.from.Send(ctx, envelope.Heartbeat, []byte("hb"))
		if err != nil {
			t.Fatal(err)
		}
		m, err := c.to.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if sent.Signed() != c.signed || m.Envelope.Signed() != c.signed || string(m.Payload) != "hb" {
			t.Fatalf("from %s: sent signed=%v, received signed=%v %q; want signed=%v", c.from.LocalID(), sent.Signed(), m.Envelope.Signed(), m.Payload, c.signed)
		}
		if c.signed {
			if err := sent.Verify(a.mgr.Live()[0].Signer().Public()); err != nil {
				t.Fatalf("the signed session envelope does not verify under the sender's operational key: %v", err)
			}
		}
	}

	// Stripped in transit: still delivered (authenticated by the session), now unsigned.
	c, d := newAgent(t), newAgent(t)
	c.cfg.SignEnvelopes = true
	ic, id := startProxy(t, alterFirstEnvelope(t, func(e *envelope.Envelope) { e.Signature = nil }))
	sc, sd, errC, errD := connect(t, c, d, ic, id, d.ID())
	if errC != nil || errD != nil {
		t.Fatal(errC, errD)
	}
	if _, err := sc.Send(ctx, envelope.TaskRequest, []byte("x")); err != nil {
		t.Fatal(err)
	}
	m, err := sd.Receive(ctx)
	if err != nil || string(m.Payload) != "x" || m.Envelope.Signed() {
		t.Fatalf("stripped envelope: %v, payload %q, signed=%v", err, m.Payload, m.Envelope.Signed())
	}
}
