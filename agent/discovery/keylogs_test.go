package discovery

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports"
)

// fakeGossip is a transport with gossip that records what is published.
type fakeGossip struct {
	fakeDHT
	mu   sync.Mutex
	msgs map[string][][]byte
}

func (g *fakeGossip) Publish(_ context.Context, topic string, data []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.msgs[topic] = append(g.msgs[topic], data)
	return nil
}

func (g *fakeGossip) published(topic string) [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.msgs[topic]
}

func copyLog(l identity.Log) *identity.Log {
	return &identity.Log{Events: append([]identity.Event{}, l.Events...)}
}

func keyLogMsg(t *testing.T, lg, fork *identity.Log) []byte {
	t.Helper()
	b, err := EncodeKeyLogMessage(lg, fork)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKeyLogGossip (ADR 0097): a rotation notice of an agent in the peer cache is stored (accept); the
// same head again is accepted, an older one ignored (key_log_stale); an agent not in the cache is
// ignored (nothing stored); a log that forks from the cached one marks the agent compromised, is
// accepted (forwarded) and this agent publishes the evidence with both logs; that evidence marks the
// agent compromised at an agent that cached the other branch; a forged log (a signature changed) is
// rejected; evidence whose logs do not fork is rejected.
func TestKeyLogGossip(t *testing.T) {
	f := newFixture(t)
	g := &fakeGossip{fakeDHT: fakeDHT{name: "libp2p", answer: map[string][]byte{}, putEvent: make(chan struct{}, 16)}, msgs: map[string][][]byte{}}
	f.svc.cfg.Networks = func() []Network { return []Network{{T: g}} }
	cache := f.svc.cfg.Logs.(*peers.Cache)
	judge := func(msg []byte) (bool, error) {
		return f.svc.ValidateGossip(ctx, transports.TopicKeyLogs, "12D3KooWAnyone", msg)
	}
	peer := agenttest.NewIdentity(t, keystore.Ed25519)
	gen0 := copyLog(peer.Log)

	// This agent's own notice passes its own validator (gossipsub judges what a node publishes).
	if ignore, err := judge(keyLogMsg(t, copyLog(f.id.Log), nil)); ignore || err != nil {
		t.Fatalf("own rotation notice: ignore=%v %v", ignore, err)
	}

	// Unknown agent: ignored, not stored.
	if ignore, err := judge(keyLogMsg(t, gen0, nil)); !ignore || reason.Of(err) != reason.GossipNotForUs {
		t.Fatalf("unknown agent: ignore=%v %v", ignore, err)
	}
	if _, ok, _ := cache.State(peer.ID().String()); ok {
		t.Fatal("the log of an unknown agent was stored")
	}
	if _, err := cache.UpdateLog(peer.ID(), gen0); err != nil {
		t.Fatal(err)
	}
	// A rotation: stored.
	peer.Rotate(t)
	gen1 := copyLog(peer.Log)
	if ignore, err := judge(keyLogMsg(t, gen1, nil)); ignore || err != nil {
		t.Fatalf("rotation notice: ignore=%v %v", ignore, err)
	}
	if st, _, _ := cache.State(peer.ID().String()); st.Generation != 1 {
		t.Fatalf("cached generation %d after the rotation notice, want 1", st.Generation)
	}
	if ignore, err := judge(keyLogMsg(t, gen1, nil)); ignore || err != nil {
		t.Fatalf("the same head again: ignore=%v %v", ignore, err)
	}
	if ignore, err := judge(keyLogMsg(t, gen0, nil)); !ignore || reason.Of(err) != reason.KeyLogStale {
		t.Fatalf("an older log: ignore=%v %v", ignore, err)
	}
	// A forged rotation (the new event's signature changed): rejected, nothing stored.
	forged := copyLog(peer.Log)
	ev := forged.Events[1]
	ev.Signatures = append([]identity.EventSignature(nil), ev.Signatures...)
	ev.Signatures[0].Sig = flip(ev.Signatures[0].Sig)
	forged.Events[1] = ev
	if ignore, err := judge([]byte(`{"v":1,"log":` + jsonString(string(forged.Encode())) + `}`)); ignore || reason.Of(err) != reason.KeyLogInvalid {
		t.Fatalf("forged log: ignore=%v %v", ignore, err)
	}
	// A fork (the holder of the pre-committed key signed another generation 2): marked compromised,
	// accepted, and the evidence (the cached branch and this one) published.
	peer.Rotate(t)
	gen2 := copyLog(peer.Log)
	if _, err := cache.UpdateLog(peer.ID(), gen2); err != nil {
		t.Fatal(err)
	}
	peerFork := peerForkAt(t, peer) // the other branch, gossiped where gen2 is cached
	if ignore, err := judge(keyLogMsg(t, peerFork, nil)); ignore || err != nil {
		t.Fatalf("forked log: ignore=%v %v", ignore, err)
	}
	if p, err := cache.Compromised(peer.ID().String()); err != nil || p == nil || p.Generation != 2 {
		t.Fatalf("not marked compromised at generation 2: %+v %v", p, err)
	}
	var evidence []byte
	eventually(t, "the evidence is published", func() bool {
		m := g.published(transports.TopicKeyLogs)
		if len(m) == 1 {
			evidence = m[0]
		}
		return len(m) == 1
	})
	id, a, b, err := DecodeKeyLogMessage(evidence)
	if err != nil || !id.Equal(peer.ID()) || b == nil || len(a.Events) != 3 || len(b.Events) != 3 {
		t.Fatalf("published evidence: %v %v", id, err)
	}

	// Another agent that cached the forked branch learns the compromise from the evidence.
	f2 := newFixture(t)
	cache2 := f2.svc.cfg.Logs.(*peers.Cache)
	if _, err := cache2.UpdateLog(peer.ID(), peerFork); err != nil {
		t.Fatal(err)
	}
	if ignore, err := f2.svc.ValidateGossip(ctx, transports.TopicKeyLogs, "12D3KooWAnyone", evidence); ignore || err != nil {
		t.Fatalf("evidence: ignore=%v %v", ignore, err)
	}
	if p, _ := cache2.Compromised(peer.ID().String()); p == nil {
		t.Fatal("the evidence did not mark the agent compromised")
	}
	// Evidence again, now that the agent is marked: accepted (forwarded), nothing more to do; a plain log
	// of a compromised agent is ignored.
	if ignore, err := f2.svc.ValidateGossip(ctx, transports.TopicKeyLogs, "12D3KooWAnyone", evidence); ignore || err != nil {
		t.Fatalf("evidence of a marked agent: ignore=%v %v", ignore, err)
	}
	if ignore, err := f2.svc.ValidateGossip(ctx, transports.TopicKeyLogs, "12D3KooWAnyone", keyLogMsg(t, gen2, nil)); !ignore || reason.Of(err) != reason.PeerCompromised {
		t.Fatalf("log of a compromised agent: ignore=%v %v", ignore, err)
	}
	// Evidence whose two logs do not fork is malformed.
	if _, _, _, err := DecodeKeyLogMessage(keyLogMsg(t, gen2, gen1)); reason.Of(err) != reason.Malformed {
		t.Fatalf("evidence without a fork: %v", err)
	}
}

// peerForkAt returns another history of peer's last generation (the pre-committed key signing twice).
func peerForkAt(t *testing.T, peer *agenttest.Identity) *identity.Log {
	t.Helper()
	n := len(peer.Log.Events)
	prev := identity.Log{Events: append([]identity.Event{}, peer.Log.Events[:n-1]...)}
	st, err := prev.Verify()
	if err != nil {
		t.Fatal(err)
	}
	e, err := identity.Rotate(ctx, st, peer.Signers[n-2], peer.Signers[n-1], agenttest.Mem(t, keystore.Ed25519).Public(),
		agenttest.Epoch.Add(time.Duration(n-1)*time.Hour+time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	prev.Events = append(prev.Events, e)
	return &prev
}

func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDecodeKeyLogMessage: malformed messages are refused with their code before the cache is read.
func TestDecodeKeyLogMessage(t *testing.T) {
	peer := agenttest.NewIdentity(t, keystore.Ed25519)
	lg := jsonString(string(peer.Log.Encode()))
	for _, tc := range []struct {
		name, msg string
		code      reason.Code
	}{
		{"empty", ``, reason.Malformed},
		{"unknown field", `{"v":1,"log":` + lg + `,"x":1}`, reason.Malformed},
		{"version 2", `{"v":2,"log":` + lg + `}`, reason.UnknownVersion},
		{"no log", `{"v":1}`, reason.Malformed},
		{"no final newline", `{"v":1,"log":` + strings.TrimSuffix(lg, `\n"`) + `"}`, reason.Malformed},
		{"not canonical", `{"v":1,"log":` + strings.Replace(lg, `,`, `, `, 1) + `}`, reason.Malformed},
		{"fork of another agent", `{"v":1,"log":` + lg + `,"fork":` + jsonString(string(agenttest.NewIdentity(t, keystore.Ed25519).Log.Encode())) + `}`, reason.Malformed},
		{"fork that does not fork", `{"v":1,"log":` + lg + `,"fork":` + lg + `}`, reason.Malformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, err := DecodeKeyLogMessage([]byte(tc.msg)); reason.Of(err) != tc.code {
				t.Fatalf("%v (code %q), want %s", err, reason.Of(err), tc.code)
			}
		})
	}
}

// FuzzDecodeKeyLogMessage: never panics; what it accepts re-encodes to the same message.
func FuzzDecodeKeyLogMessage(f *testing.F) {
	f.Add([]byte(`{"v":1,"log":"{\"v\":1}\n"}`))
	f.Add([]byte(`{"v":1,"log":"","fork":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, lg, fork, err := DecodeKeyLogMessage(b)
		if err != nil {
			return
		}
		again, err := EncodeKeyLogMessage(lg, fork)
		if err != nil {
			t.Fatalf("accepted message does not re-encode: %v", err)
		}
		if _, _, _, err := DecodeKeyLogMessage(again); err != nil {
			t.Fatalf("re-encoded message refused: %v", err)
		}
	})
}

// TestRotationNoticePublished: when this agent's key event log changes (a rotation), the publisher
// gossips the new log (a rotation notice) and publishes a record with the new head, without waiting for
// an address change or the republish interval.
func TestRotationNoticePublished(t *testing.T) {
	f := newFixture(t)
	g := &fakeGossip{fakeDHT: fakeDHT{name: "libp2p", answer: map[string][]byte{}, putEvent: make(chan struct{}, 16)}, msgs: map[string][][]byte{}}
	f.svc.cfg.Networks = func() []Network { return []Network{{T: g, Listeners: []Listener{f.lp2p}}} }
	var mu sync.Mutex
	own := copyLog(f.id.Log)
	f.svc.cfg.OwnLog = func() *identity.Log { mu.Lock(); defer mu.Unlock(); return copyLog(*own) }
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go f.svc.Run(rctx)
	waitPut(t, &g.fakeDHT, "the first record", func(r *Record) bool { return r.Generation == 0 })
	if n := len(g.published(transports.TopicKeyLogs)); n != 0 {
		t.Fatalf("%d key-log messages before any rotation", n)
	}
	f.id.Rotate(t)
	mu.Lock()
	own = copyLog(f.id.Log)
	mu.Unlock()
	waitPut(t, &g.fakeDHT, "a record with the new head", func(r *Record) bool { return r.Generation == 1 })
	eventually(t, "the rotation notice", func() bool { return len(g.published(transports.TopicKeyLogs)) == 1 })
	id, lg, fork, err := DecodeKeyLogMessage(g.published(transports.TopicKeyLogs)[0])
	if err != nil || !id.Equal(f.id.ID()) || fork != nil || len(lg.Events) != 2 {
		t.Fatalf("rotation notice: %v %v", id, err)
	}
}

const keyLogGoldenFile = "testdata/key-log-gossip-vector.txt"

// TestGoldenKeyLogMessages: a rotation notice and compromise evidence made with fixed keys (identity key
// seed a0, next key a1, the two rotations' next keys a4 and a5), byte for byte as docs/protocol.md
// quotes them; both decode and verify.
func TestGoldenKeyLogMessages(t *testing.T) {
	idKey, next := fixedSigner(t, 0xa0), fixedSigner(t, 0xa1)
	ev, err := identity.Incept(ctx, idKey, next.Public(), keystore.PublicKey{}, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	inception := identity.Log{Events: []identity.Event{ev}}
	st, err := inception.Verify()
	if err != nil {
		t.Fatal(err)
	}
	branch := func(seed byte) *identity.Log {
		e, err := identity.Rotate(ctx, st, idKey, next, fixedSigner(t, seed).Public(), time.Unix(1767225600, 0))
		if err != nil {
			t.Fatal(err)
		}
		return &identity.Log{Events: []identity.Event{ev, e}}
	}
	a, b := branch(0xa4), branch(0xa5)
	notice, evidence := keyLogMsg(t, a, nil), keyLogMsg(t, a, b)
	for _, m := range [][]byte{notice, evidence} {
		if _, _, _, err := DecodeKeyLogMessage(m); err != nil {
			t.Fatal(err)
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "topic: %s\n", transports.TopicKeyLogs)
	fmt.Fprintf(&out, "agent: identity key Ed25519 seed a0 x 32, next key a1 x 32; ID %s\n", st.ID)
	fmt.Fprintf(&out, "rotation to the a1 key at 1767225600 committing the next key a4 x 32 (notice), or a5 x 32 (the fork)\n")
	fmt.Fprintf(&out, "rotation notice (%d bytes):\n%s\n", len(notice), notice)
	fmt.Fprintf(&out, "compromise evidence (%d bytes):\n%s\n", len(evidence), evidence)
	docHasVector(t, checkGolden(t, keyLogGoldenFile, "key-log messages", out.String()))
}
