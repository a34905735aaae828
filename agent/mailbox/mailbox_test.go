package mailbox

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

var ctx = context.Background()

// side is one agent: its identity, delegations, state.db (bbolt on disk), peer cache and mailbox.
type side struct {
	id    *agenttest.Identity
	mgr   *delegation.Manager
	path  string
	db    *bbolt.DB
	cache *peers.Cache
	svc   *Service
	mu    sync.Mutex
	audit []audit.EventType
	codes []string
}

func newSide(t *testing.T, clock *agenttest.Clock, lim Limits) *side {
	t.Helper()
	s := &side{id: agenttest.NewIdentity(t, keystore.Ed25519), path: filepath.Join(t.TempDir(), "state.db")}
	var err error
	if s.mgr, err = delegation.NewManager(ctx, delegation.Config{Identity: s.id.Current(), State: s.id.State, Clock: clock.Now, KEM: suite.KEMX25519}); err != nil {
		t.Fatal(err)
	}
	s.open(t, clock, lim)
	return s
}

func (s *side) open(t *testing.T, clock *agenttest.Clock, lim Limits) {
	t.Helper()
	db, err := bbolt.Open(s.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	s.db = db
	if s.cache, err = peers.New(db); err != nil {
		t.Fatal(err)
	}
	s.cache.SetClock(clock.Now)
	st, err := NewStore(db, lim)
	if err != nil {
		t.Fatal(err)
	}
	s.svc = &Service{Self: s.id.ID().String(), Store: st, Keys: s.mgr, Peers: s.cache, Now: clock.Now,
		Audit: func(typ audit.EventType, _, _ string, _ audit.Outcome, d map[string]any) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.audit = append(s.audit, typ)
			if c, ok := d["reason"].(string); ok {
				s.codes = append(s.codes, c)
			}
		}}
}

func (s *side) restart(t *testing.T, clock *agenttest.Clock, lim Limits) {
	t.Helper()
	send := s.svc.Send
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	s.open(t, clock, lim)
	s.svc.Send = send
}

// meet stores each side's log (and a's current delegation at b) as a handshake would.
func meet(t *testing.T, a, b *side) {
	t.Helper()
	for _, p := range [][2]*side{{a, b}, {b, a}} {
		if _, err := p[1].cache.UpdateLog(p[0].id.ID(), &p[0].id.Log); err != nil {
			t.Fatal(err)
		}
		k, err := p[0].mgr.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p[1].cache.PutDelegation(k.Delegation); err != nil {
			t.Fatal(err)
		}
	}
}

// link connects the two sides' Send to each other's Handle (a session, in memory).
func link(a, b *side) {
	a.svc.Send = func(ctx context.Context, peer string, t envelope.MessageType, p []byte) error {
		return b.svc.Handle(ctx, a.svc.Self, t, p)
	}
	b.svc.Send = func(ctx context.Context, peer string, t envelope.MessageType, p []byte) error {
		return a.svc.Handle(ctx, b.svc.Self, t, p)
	}
}

func codeOf(t *testing.T, err error, want reason.Code) {
	t.Helper()
	if reason.Of(err) != want {
		t.Fatalf("error %v: want %s", err, want)
	}
}

// TestStoreAndForward: a message posted for B is sealed, stored as ciphertext only (the test reads the
// bbolt file), survives a restart of the gateway's store, is delivered once when B comes up, deleted
// only on B's acknowledgement, and a replayed copy is refused with replayed_message.
func TestStoreAndForward(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	a, b := newSide(t, clock, Limits{}), newSide(t, clock, Limits{})
	meet(t, a, b)
	secret := []byte("the launch code is 0000 -- plaintext marker 7f3a9c")
	m, err := a.svc.Post(ctx, b.svc.Self, secret)
	if err != nil {
		t.Fatal(err)
	}
	// Only ciphertext in the gateway's file.
	if err := a.db.Sync(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(a.path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, secret) || bytes.Contains(raw, []byte("plaintext marker")) {
		t.Fatal("the gateway's state.db holds the message's plaintext")
	}
	if !bytes.Contains(raw, m.Envelope[len(m.Envelope)-64:]) {
		t.Fatal("the sealed envelope is not in the file (is the test reading the right file?)")
	}
	// A restart: the message is still there.
	a.restart(t, clock, Limits{})
	link(a, b)
	if ps, err := a.svc.Store.Pending(b.svc.Self, clock.Now()); err != nil || len(ps) != 1 || ps[0].MessageID != m.MessageID {
		t.Fatalf("after restart: %v %v", ps, err)
	}
	clock.Advance(10 * time.Minute) // B comes up later (inside its delegation's life)
	a.svc.PeerUp(ctx, b.svc.Self)
	got, err := b.svc.Messages()
	if err != nil || len(got) != 1 || !bytes.Equal(got[0].Data, secret) || got[0].From != a.svc.Self || got[0].MessageID != m.MessageID {
		t.Fatalf("B's inbox: %+v %v", got, err)
	}
	if n, _ := a.svc.Store.Count(); n != 0 {
		t.Fatalf("%d messages still stored after the ack", n)
	}
	if len(a.audit) != 1 || a.audit[0] != Delivered || len(b.audit) != 1 || b.audit[0] != Received {
		t.Fatalf("audit: a %v, b %v", a.audit, b.audit)
	}
	// A second session: nothing to deliver, nothing received twice.
	a.svc.PeerUp(ctx, b.svc.Self)
	if got, _ := b.svc.Messages(); len(got) != 1 {
		t.Fatalf("delivered twice: %d", len(got))
	}
	// A replayed copy (the stored record put back) is refused with the reason; A learns it from the ack.
	if err := a.svc.Store.Put(m); err != nil {
		t.Fatal(err)
	}
	a.svc.flight = nil
	a.svc.PeerUp(ctx, b.svc.Self)
	if got, _ := b.svc.Messages(); len(got) != 1 {
		t.Fatalf("the replay was accepted: %d", len(got))
	}
	if len(b.codes) != 1 || b.codes[0] != string(reason.ReplayedMessage) || len(a.codes) != 1 || a.codes[0] != string(reason.ReplayedMessage) {
		t.Fatalf("replay reasons: b %v, a %v", b.codes, a.codes)
	}
	if n, _ := a.svc.Store.Count(); n != 0 {
		t.Fatal("the refused copy is still stored")
	}
	// The replay record survives B's restart.
	b.restart(t, clock, Limits{})
	link(a, b)
	_, err = b.svc.Receive(ctx, a.svc.Self, m.Delivery())
	codeOf(t, err, reason.ReplayedMessage)
}

// TestRefusals: every check of Post and Receive, with its reason code; nothing stored by a refusal.
func TestRefusals(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	lim := Limits{MaxMessage: 100, PerRecipient: 2, Total: 3}
	a, b, c := newSide(t, clock, lim), newSide(t, clock, lim), newSide(t, clock, lim)
	stranger := agenttest.NewIdentity(t, keystore.Ed25519).ID().String()
	if _, err := a.svc.Post(ctx, b.svc.Self, []byte("x")); reason.Of(err) != reason.RecipientKeyUnknown {
		t.Fatalf("before meeting: %v", err)
	}
	meet(t, a, b)
	meet(t, a, c)
	codeOf(t, func() error { _, err := a.svc.Post(ctx, stranger, []byte("x")); return err }(), reason.RecipientKeyUnknown)
	codeOf(t, func() error { _, err := a.svc.Post(ctx, "not-an-id", []byte("x")); return err }(), reason.BadRequest)
	codeOf(t, func() error { _, err := a.svc.Post(ctx, b.svc.Self, make([]byte, 101)); return err }(), reason.TooLarge)
	for i := 0; i < 2; i++ {
		if _, err := a.svc.Post(ctx, b.svc.Self, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	codeOf(t, func() error { _, err := a.svc.Post(ctx, b.svc.Self, []byte("x")); return err }(), reason.MailboxFull)
	if _, err := a.svc.Post(ctx, c.svc.Self, []byte("x")); err != nil {
		t.Fatal(err)
	}
	codeOf(t, func() error { _, err := a.svc.Post(ctx, c.svc.Self, []byte("x")); return err }(), reason.MailboxFull) // total
	pend, _ := a.svc.Store.Pending(b.svc.Self, clock.Now())
	good := pend[0]

	// Receive's checks.
	codeOf(t, func() error { _, err := b.svc.Receive(ctx, c.svc.Self, good.Delivery()); return err }(), reason.UnexpectedMessage) // not the sealer
	codeOf(t, func() error { _, err := c.svc.Receive(ctx, a.svc.Self, good.Delivery()); return err }(), reason.WrongRecipient)
	tampered := *good
	tampered.Envelope = bytes.Clone(good.Envelope)
	tampered.Envelope[len(tampered.Envelope)-70] ^= 1
	if _, err := b.svc.Receive(ctx, a.svc.Self, tampered.Delivery()); err == nil {
		t.Fatal("a tampered envelope was accepted")
	}
	other := *good
	ck, _ := c.mgr.Current(ctx)
	other.Delegation = ck.Encoded() // a delegation of another agent
	if _, err := b.svc.Receive(ctx, a.svc.Self, other.Delivery()); err == nil {
		t.Fatal("an envelope with another agent's delegation was accepted")
	}
	codeOf(t, func() error { _, err := b.svc.Receive(ctx, a.svc.Self, []byte{1, 2, 3}); return err }(), reason.Malformed)
	if got, _ := b.svc.Messages(); len(got) != 0 {
		t.Fatalf("refusals stored %d messages", len(got))
	}
	// Stale: older than the retention (a clock far ahead; A's delegation then also expired, the age is checked first).
	clock.Advance(DefaultRetention + time.Minute)
	codeOf(t, func() error { _, err := b.svc.Receive(ctx, a.svc.Self, good.Delivery()); return err }(), reason.StaleTimestamp)
	// Expired records are pruned; Pending skips them meanwhile.
	if ps, _ := a.svc.Store.Pending(b.svc.Self, clock.Now()); len(ps) != 0 {
		t.Fatalf("expired messages pending: %d", len(ps))
	}
	if out, _, err := a.svc.Store.Prune(clock.Now()); err != nil || out != 3 {
		t.Fatalf("prune: %d %v", out, err)
	}
}

// TestUnknownSender: B has no log of the sealer.
func TestUnknownSender(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	a, b := newSide(t, clock, Limits{}), newSide(t, clock, Limits{})
	if _, err := a.cache.UpdateLog(b.id.ID(), &b.id.Log); err != nil {
		t.Fatal(err)
	}
	k, _ := b.mgr.Current(ctx)
	if err := a.cache.PutDelegation(k.Delegation); err != nil {
		t.Fatal(err)
	}
	m, err := a.svc.Post(ctx, b.svc.Self, []byte("hi"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.svc.Receive(ctx, a.svc.Self, m.Delivery())
	codeOf(t, err, reason.UnknownPeer)
}

func FuzzDecoders(f *testing.F) {
	f.Add((&Stored{Recipient: "r", MessageID: "m", Envelope: []byte{1}, Delegation: []byte{2}}).encode())
	f.Add((&Stored{Envelope: []byte{1}, Delegation: []byte{2}}).Delivery())
	f.Add(Ack{MessageID: "m", Reason: "replayed_message"}.Encode())
	f.Add((&Message{From: "f", MessageID: "m", Data: []byte("x")}).encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := DecodeStored(b); err == nil && !bytes.Equal(s.encode(), b) {
			t.Fatal("stored: decode then encode differs")
		}
		if e, d, err := DecodeDelivery(b); err == nil && !bytes.Equal((&Stored{Envelope: e, Delegation: d}).Delivery(), b) {
			t.Fatal("delivery: decode then encode differs")
		}
		if a, err := DecodeAck(b); err == nil && !bytes.Equal(a.Encode(), b) {
			t.Fatal("ack: decode then encode differs")
		}
		if m, err := decodeMessage(b); err == nil && !bytes.Equal(m.encode(), b) {
			t.Fatal("inbox record: decode then encode differs")
		}
	})
}

// TestRecipientLostItsKey: B restarted (a new delegation, its old encryption key gone) after A sealed a
// message to the old key: B refuses it with decrypt_failed, acknowledges the refusal, and A drops it
// (audited) rather than delivering it forever. A message posted once A has B's new delegation arrives.
func TestRecipientLostItsKey(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	a, b := newSide(t, clock, Limits{}), newSide(t, clock, Limits{})
	meet(t, a, b)
	if _, err := a.svc.Post(ctx, b.svc.Self, []byte("to the old key")); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute) // B restarts a minute later
	var err error
	if b.mgr, err = delegation.NewManager(ctx, delegation.Config{Identity: b.id.Current(), State: b.id.State, Clock: clock.Now, KEM: suite.KEMX25519}); err != nil {
		t.Fatal(err)
	}
	b.svc.Keys = b.mgr
	link(a, b)
	a.svc.PeerUp(ctx, b.svc.Self)
	if len(b.codes) != 1 || b.codes[0] != string(reason.DecryptFailed) || len(a.codes) != 1 || a.codes[0] != string(reason.DecryptFailed) {
		t.Fatalf("reasons: b %v, a %v", b.codes, a.codes)
	}
	if n, _ := a.svc.Store.Count(); n != 0 {
		t.Fatal("the unopenable message is still stored")
	}
	meet(t, a, b) // the next handshake: A learns B's new delegation
	if _, err := a.svc.Post(ctx, b.svc.Self, []byte("to the new key")); err != nil {
		t.Fatal(err)
	}
	a.svc.PeerUp(ctx, b.svc.Self)
	if got, _ := b.svc.Messages(); len(got) != 1 || string(got[0].Data) != "to the new key" {
		t.Fatalf("B's inbox: %+v", got)
	}
}

// TestAckVector: the mailbox_ack vector of docs/protocol.md.
func TestAckVector(t *testing.T) {
	const want = "0000001651304e4451304e4451304e4451304e4451304e445177000000107265706c617965645f6d657373616765"
	a := Ack{MessageID: "Q0NDQ0NDQ0NDQ0NDQ0NDQw", Reason: string(reason.ReplayedMessage)}
	if got := hex.EncodeToString(a.Encode()); got != want {
		t.Fatalf("ack %s, want %s", got, want)
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "protocol.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, []byte(want)) {
		t.Fatal("docs/protocol.md lacks the mailbox_ack vector")
	}
	b, _ := hex.DecodeString(want)
	if got, err := DecodeAck(b); err != nil || got != a {
		t.Fatalf("decode: %+v %v", got, err)
	}
}
