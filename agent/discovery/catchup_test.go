package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports"
)

// sent is one revocation_sync message a service sent.
type sent struct {
	to      string
	payload []byte
}

// fakeCatchup is authorization as catch-up sees it, over a real rbac.Authorizer; what the service
// sends goes to out.
type fakeCatchup struct {
	fakeRevocations
	out chan sent
}

func (f fakeCatchup) HeldRevocations(max int) []rbac.Revocation { return f.az.Revocations(max) }
func (f fakeCatchup) HeldRevocationOf(g string) (rbac.Revocation, bool) {
	return f.az.Revocation(g)
}
func (f fakeCatchup) RevocationWanted() func(grant, issuer string) bool {
	return func(grant, issuer string) bool {
		id, err := identity.ParseID(issuer)
		return err == nil && !f.az.Revoked(grant) && f.az.IsAdmin(id)
	}
}
func (f fakeCatchup) IssuerLog(string) []byte                               { return nil }
func (f fakeCatchup) OnCatchup(func(context.Context, string, []byte) error) {}
func (f fakeCatchup) SendTo(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
	if t != envelope.RevocationSync {
		return fmt.Errorf("sent a %s", t)
	}
	select {
	case f.out <- sent{peer, payload}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// catchupNode is one agent's discovery service with catch-up, and what it reported as misbehaving.
type catchupNode struct {
	id  identity.ID
	svc *Service
	az  *rbac.Authorizer
	out chan sent

	mu  sync.Mutex
	bad []identity.ID
}

func newCatchupNode(t *testing.T, seed byte, admins ...identity.ID) *catchupNode {
	t.Helper()
	f := newFixture(t)
	n := &catchupNode{id: identity.NewID(fixedSigner(t, seed).Public()), svc: f.svc, az: authorizer(t, admins...), out: make(chan sent, 64)}
	f.svc.cfg.Revocations = fakeRevocations{n.az}
	f.svc.cfg.Catchup = fakeCatchup{fakeRevocations{n.az}, n.out}
	f.svc.cfg.Misbehaved = func(_ context.Context, id identity.ID) { n.mu.Lock(); n.bad = append(n.bad, id); n.mu.Unlock() }
	return n
}

func (n *catchupNode) reported() []identity.ID {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]identity.ID(nil), n.bad...)
}

func (n *catchupNode) result(r string) float64 {
	return testutil.ToFloat64(n.svc.m.c.received.WithLabelValues(r))
}

// next is the next message n sent (within a second).
func (n *catchupNode) next(t *testing.T) sent {
	t.Helper()
	select {
	case m := <-n.out:
		return m
	case <-time.After(time.Second):
		t.Fatal("no catch-up message sent")
	}
	return sent{}
}

func (n *catchupNode) quiet(t *testing.T) {
	t.Helper()
	select {
	case m := <-n.out:
		t.Fatalf("unexpected catch-up message to %s: %.200s", m.to, m.payload)
	case <-time.After(100 * time.Millisecond):
	}
}

// pump delivers the messages of a and b to each other until both are quiet; it returns how many
// messages of each kind travelled.
func pump(t *testing.T, a, b *catchupNode) map[string]int {
	t.Helper()
	kinds := map[string]int{}
	for {
		var m sent
		var to, from *catchupNode
		select {
		case m = <-a.out:
			to, from = b, a
		case m = <-b.out:
			to, from = a, b
		case <-time.After(200 * time.Millisecond):
			return kinds
		}
		if m.to != to.id.String() {
			t.Fatalf("message to %s, want %s", m.to, to.id)
		}
		cm, _, err := DecodeCatchup(m.payload)
		if err != nil {
			t.Fatalf("a service sent a message that does not decode: %v", err)
		}
		switch {
		case cm.Offer != nil:
			kinds["offer"]++
		case cm.Want != nil:
			kinds["want"]++
		default:
			kinds["batch"]++
		}
		if err := to.svc.HandleCatchup(ctx, from.id.String(), m.payload); err != nil {
			t.Fatalf("honest catch-up message refused: %v", err)
		}
	}
}

func grantID(i int) string {
	b := bytes.Repeat([]byte{byte(i)}, 16)
	b[0], b[1] = byte(i>>8), 0xee
	return identity.Base64().EncodeToString(b)
}

func revoke(t *testing.T, s keystore.Signer, issuer identity.ID, grant string) rbac.Revocation {
	t.Helper()
	r, err := rbac.IssueRevocation(ctx, s, issuer, grant, time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestCatchupBetweenPeers: b holds 300 revocations of c's administrator (more than one want holds)
// and one of another administrator that c does not list; when the session comes up b offers them, c
// asks for the 300 in two wants, each answered by one batch, and installs them (verified as gossip);
// the other is never asked for. c, holding nothing, offers nothing; a second session finds nothing
// to ask.
func TestCatchupBetweenPeers(t *testing.T) {
	adminKey, otherKey := fixedSigner(t, 0xb0), fixedSigner(t, 0xb1)
	admin, other := identity.NewID(adminKey.Public()), identity.NewID(otherKey.Public())
	b := newCatchupNode(t, 0xc1, admin, other)
	c := newCatchupNode(t, 0xc2, admin)
	const n = 300
	for i := range n {
		if err := b.az.AddRevocation(ctx, revoke(t, adminKey, admin, grantID(i))); err != nil {
			t.Fatal(err)
		}
	}
	foreign := revoke(t, otherKey, other, grantID(n))
	if err := b.az.AddRevocation(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	b.svc.CatchupPeerUp(ctx, c.id.String())
	c.svc.CatchupPeerUp(ctx, b.id.String())
	kinds := pump(t, b, c)
	if kinds["offer"] != 1 || kinds["want"] != 2 || kinds["batch"] != 2 {
		t.Fatalf("messages %v, want 1 offer (c holds nothing), 2 wants and 2 batches", kinds)
	}
	for i := range n {
		if !c.az.Revoked(grantID(i)) {
			t.Fatalf("grant %d not revoked at c after catch-up", i)
		}
	}
	if c.az.Revoked(foreign.Grant) {
		t.Fatal("c installed a revocation of an agent that is not its administrator")
	}
	if got := c.result("accept"); got != n {
		t.Fatalf("accepted %v, want %d", got, n)
	}
	if got := testutil.ToFloat64(b.svc.m.c.served); got != n {
		t.Fatalf("b served %v, want %d", got, n)
	}
	if len(b.reported()) != 0 || len(c.reported()) != 0 {
		t.Fatalf("honest peers reported: %v %v", b.reported(), c.reported())
	}
	// The next session: both offer, neither wants anything.
	b.svc.CatchupPeerUp(ctx, c.id.String())
	c.svc.CatchupPeerUp(ctx, b.id.String())
	if kinds := pump(t, b, c); kinds["offer"] != 2 || kinds["want"] != 0 {
		t.Fatalf("second session: %v, want 2 offers and nothing asked", kinds)
	}
}

func catchupMsg(t *testing.T, m CatchupMessage) []byte {
	t.Helper()
	m.V = CatchupVersion
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func batchOf(t *testing.T, rs ...rbac.Revocation) []byte {
	t.Helper()
	batch := []json.RawMessage{}
	for _, r := range rs {
		msg, err := EncodeRevocationMessage(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, msg)
	}
	return catchupMsg(t, CatchupMessage{Batch: &batch})
}

func offerOf(t *testing.T, rs ...rbac.Revocation) []byte {
	t.Helper()
	offer := []CatchupEntry{}
	for _, r := range rs {
		offer = append(offer, CatchupEntry{Grant: r.Grant, Issuer: r.Issuer})
	}
	return catchupMsg(t, CatchupMessage{Offer: &offer})
}

// TestCatchupForgedRevocation: a peer offers a revocation and answers the want with a forged copy (the
// signature changed): it is refused with grant_bad_signature exactly as on gossip, never installed, the
// peer is reported once, and catch-up from it ends for the session (its next batch, valid or not, is
// dropped unjudged). Its next session starts afresh.
func TestCatchupForgedRevocation(t *testing.T) {
	adminKey := fixedSigner(t, 0xb0)
	admin := identity.NewID(adminKey.Public())
	c := newCatchupNode(t, 0xc2, admin)
	rogue := identity.NewID(fixedSigner(t, 0xc3).Public()).String()
	genuine := revoke(t, adminKey, admin, grantID(1))
	second := revoke(t, adminKey, admin, grantID(2))
	forged := genuine
	forged.Sig = flip(genuine.Sig)

	c.svc.CatchupPeerUp(ctx, rogue) // c holds nothing: no offer
	c.quiet(t)
	if err := c.svc.HandleCatchup(ctx, rogue, offerOf(t, genuine, second)); err != nil {
		t.Fatal(err)
	}
	w := c.next(t)
	if !strings.Contains(string(w.payload), `"want":["`+genuine.Grant+`","`+second.Grant+`"]`) {
		t.Fatalf("want %s", w.payload)
	}
	err := c.svc.HandleCatchup(ctx, rogue, batchOf(t, forged, second))
	if reason.Of(err) != reason.GrantBadSignature {
		t.Fatalf("forged revocation: %v (code %q), want grant_bad_signature", err, reason.Of(err))
	}
	if c.az.Revoked(genuine.Grant) || c.az.Revoked(second.Grant) {
		t.Fatal("a revocation of the forged batch was installed")
	}
	if bad := c.reported(); len(bad) != 1 || bad[0].String() != rogue {
		t.Fatalf("reported %v, want the rogue peer once", bad)
	}
	if got, refused := c.result("reject:grant_bad_signature"), c.result("refused:grant_bad_signature"); got != 1 || refused != 0 {
		t.Fatalf("reject:grant_bad_signature %v, refused:grant_bad_signature %v; want the revocation counted once, as judged", got, refused)
	}
	c.quiet(t) // no further want to a peer that was cut off
	if err := c.svc.HandleCatchup(ctx, rogue, batchOf(t, genuine)); reason.Of(err) != reason.CatchupUnsolicited || c.az.Revoked(genuine.Grant) {
		t.Fatalf("a batch after the cut-off: %v (revoked %v), want it dropped unjudged", err, c.az.Revoked(genuine.Grant))
	}
	if c.result("dropped") != 1 {
		t.Fatal("the dropped batch is not counted")
	}
	// A new session: catch-up from the peer starts again (its reputation carries the earlier report).
	c.svc.CatchupPeerUp(ctx, rogue)
	if err := c.svc.HandleCatchup(ctx, rogue, offerOf(t, genuine)); err != nil {
		t.Fatal(err)
	}
	c.next(t)
	if err := c.svc.HandleCatchup(ctx, rogue, batchOf(t, genuine)); err != nil || !c.az.Revoked(genuine.Grant) {
		t.Fatalf("a genuine revocation in the next session: %v", err)
	}
}

// TestCatchupFloodCutOff: what a peer can make an agent judge is bounded by what the agent asked for.
// A batch nobody asked for, one that carries more than was asked, a batch over the size limit, more
// offers in a session than MaxCatchupRounds, more wants than twice that: each is refused before any revocation in it is
// judged (none installed), the peer is reported, and catch-up from it ends for the session.
func TestCatchupFloodCutOff(t *testing.T) {
	adminKey := fixedSigner(t, 0xb0)
	admin := identity.NewID(adminKey.Public())
	rogue := identity.NewID(fixedSigner(t, 0xc3).Public()).String()
	rs := make([]rbac.Revocation, transports.MaxCatchupWant+1)
	for i := range rs {
		rs[i] = revoke(t, adminKey, admin, grantID(i))
	}
	for _, tc := range []struct {
		name  string
		setup func(c *catchupNode)
		msg   func() []byte
		code  reason.Code
	}{
		{"unsolicited batch", nil, func() []byte { return batchOf(t, rs[0]) }, reason.CatchupUnsolicited},
		{"unsolicited empty batch", nil, func() []byte { return batchOf(t) }, reason.CatchupUnsolicited},
		{"more than asked", func(c *catchupNode) {
			if err := c.svc.HandleCatchup(ctx, rogue, offerOf(t, rs[0])); err != nil {
				t.Fatal(err)
			}
			c.next(t)
		}, func() []byte { return batchOf(t, rs[0], rs[1], rs[2]) }, reason.CatchupUnsolicited},
		{"batch over MaxCatchupWant", func(c *catchupNode) {
			if err := c.svc.HandleCatchup(ctx, rogue, offerOf(t, rs[:transports.MaxCatchupWant]...)); err != nil {
				t.Fatal(err)
			}
			c.next(t)
		}, func() []byte { return batchOf(t, rs...) }, reason.Malformed},
		{"message over MaxCatchupMessage", nil, func() []byte {
			return []byte(`{"v":1,"want":["` + strings.Repeat("A", transports.MaxCatchupMessage) + `"]}`)
		}, reason.Malformed},
		{"offers beyond the rounds", func(c *catchupNode) {
			for range transports.MaxCatchupRounds {
				if err := c.svc.HandleCatchup(ctx, rogue, offerOf(t, rs[0])); err != nil {
					t.Fatal(err)
				}
			}
		}, func() []byte { return offerOf(t, rs[0]) }, reason.CatchupExceeded},
		{"wants beyond the rounds", func(c *catchupNode) {
			want := []string{rs[0].Grant}
			for range transports.MaxCatchupServed {
				if err := c.svc.HandleCatchup(ctx, rogue, catchupMsg(t, CatchupMessage{Want: &want})); err != nil {
					t.Fatal(err)
				}
			}
		}, func() []byte { want := []string{rs[0].Grant}; return catchupMsg(t, CatchupMessage{Want: &want}) }, reason.CatchupExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCatchupNode(t, 0xc2, admin)
			c.svc.CatchupPeerUp(ctx, rogue)
			if tc.setup != nil {
				tc.setup(c)
			}
			err := c.svc.HandleCatchup(ctx, rogue, tc.msg())
			if reason.Of(err) != tc.code {
				t.Fatalf("%v (code %q), want %s", err, reason.Of(err), tc.code)
			}
			for _, r := range rs {
				if c.az.Revoked(r.Grant) {
					t.Fatalf("revocation of %s installed from a refused message", r.Grant)
				}
			}
			if bad := c.reported(); len(bad) != 1 || bad[0].String() != rogue {
				t.Fatalf("reported %v, want the peer once", bad)
			}
			if got := c.result("refused:" + string(tc.code)); got != 1 {
				t.Fatalf("refused:%s counted %v, want 1", tc.code, got)
			}
			// Catch-up from the peer has ended: even a batch it was asked for is dropped.
			if err := c.svc.HandleCatchup(ctx, rogue, batchOf(t, rs[0])); err == nil || c.az.Revoked(rs[0].Grant) {
				t.Fatalf("a batch after the cut-off was judged: %v", err)
			}
		})
	}
}

// TestCatchupLateAnswerAfterNewSession: a session is replaced while a want is outstanding (both sides
// start again); the peer's answer to the old want, arriving late, is judged and accepted, not taken for
// an unsolicited batch, and the new session's want goes on as usual.
func TestCatchupLateAnswerAfterNewSession(t *testing.T) {
	adminKey := fixedSigner(t, 0xb0)
	admin := identity.NewID(adminKey.Public())
	c := newCatchupNode(t, 0xc2, admin)
	peer := identity.NewID(fixedSigner(t, 0xc3).Public()).String()
	r1, r2 := revoke(t, adminKey, admin, grantID(1)), revoke(t, adminKey, admin, grantID(2))
	c.svc.CatchupPeerUp(ctx, peer)
	if err := c.svc.HandleCatchup(ctx, peer, offerOf(t, r1)); err != nil {
		t.Fatal(err)
	}
	c.next(t)                      // want r1, outstanding
	c.svc.CatchupPeerUp(ctx, peer) // the session is replaced
	if err := c.svc.HandleCatchup(ctx, peer, offerOf(t, r1, r2)); err != nil {
		t.Fatal(err)
	}
	w := c.next(t) // want r1 and r2 in the new session
	if !strings.Contains(string(w.payload), r2.Grant) {
		t.Fatalf("want %s", w.payload)
	}
	if err := c.svc.HandleCatchup(ctx, peer, batchOf(t, r1)); err != nil { // the old session's answer
		t.Fatalf("late answer: %v", err)
	}
	if err := c.svc.HandleCatchup(ctx, peer, batchOf(t, r2)); err != nil { // the new one's (r1 already sent)
		t.Fatalf("answer: %v", err)
	}
	if !c.az.Revoked(r1.Grant) || !c.az.Revoked(r2.Grant) || len(c.reported()) != 0 {
		t.Fatalf("revoked %v %v, reported %v", c.az.Revoked(r1.Grant), c.az.Revoked(r2.Grant), c.reported())
	}
}

// TestCatchupQueueBounded: what all peers together can make an agent queue to ask for is bounded
// (transports.MaxCatchupQueued): 17 peers each offering 4096 wanted revocations fill the queue with 16 x 4096;
// the last peer's offer is not queued beyond it (and nothing fails: it is asked for at a later session).
func TestCatchupQueueBounded(t *testing.T) {
	adminKey := fixedSigner(t, 0xb0)
	admin := identity.NewID(adminKey.Public())
	c := newCatchupNode(t, 0xc2, admin)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the wants c sends
		for {
			select {
			case <-c.out:
			case <-stop:
				return
			}
		}
	}()
	offer := make([]CatchupEntry, transports.MaxCatchupOffer)
	queued := 0
	for p := range 17 {
		peer := identity.NewID(fixedSigner(t, byte(0x20+p)).Public()).String()
		for i := range offer {
			b := bytes.Repeat([]byte{byte(p)}, 16)
			b[0], b[1] = byte(i>>8), byte(i)
			offer[i] = CatchupEntry{Grant: identity.Base64().EncodeToString(b), Issuer: admin.String()}
		}
		if err := c.svc.HandleCatchup(ctx, peer, catchupMsg(t, CatchupMessage{Offer: &offer})); err != nil {
			t.Fatal(err)
		}
	}
	c.svc.cu.mu.Lock()
	for _, p := range c.svc.cu.peers {
		queued += len(p.queue) + len(p.asked)
	}
	c.svc.cu.mu.Unlock()
	if queued != transports.MaxCatchupQueued {
		t.Fatalf("%d grants queued or asked over 17 offers of %d, want the bound %d", queued, transports.MaxCatchupOffer, transports.MaxCatchupQueued)
	}
}

// TestCatchupAnswersInOrderWithinTheLimit: a want is answered in the order asked, only with what is
// held; an empty batch says none is held, and the asker stops asking for them.
func TestCatchupAnswersInOrderWithinTheLimit(t *testing.T) {
	adminKey := fixedSigner(t, 0xb0)
	admin := identity.NewID(adminKey.Public())
	b := newCatchupNode(t, 0xc1, admin)
	peer := identity.NewID(fixedSigner(t, 0xc2).Public()).String()
	held := revoke(t, adminKey, admin, grantID(7))
	if err := b.az.AddRevocation(ctx, held); err != nil {
		t.Fatal(err)
	}
	b.svc.CatchupPeerUp(ctx, peer)
	b.next(t) // the offer
	want := []string{grantID(9), held.Grant, grantID(8)}
	if err := b.svc.HandleCatchup(ctx, peer, catchupMsg(t, CatchupMessage{Want: &want})); err != nil {
		t.Fatal(err)
	}
	m, revs, err := DecodeCatchup(b.next(t).payload)
	if err != nil || m.Batch == nil || len(revs) != 1 || revs[0] != held {
		t.Fatalf("batch %+v %v, want exactly the held revocation", revs, err)
	}
	none := []string{grantID(9)}
	if err := b.svc.HandleCatchup(ctx, peer, catchupMsg(t, CatchupMessage{Want: &none})); err != nil {
		t.Fatal(err)
	}
	if p := b.next(t).payload; string(p) != `{"v":1,"batch":[]}` {
		t.Fatalf("answer to a want of nothing held: %s", p)
	}

	// The asker: an empty batch ends the want; nothing is asked again.
	c := newCatchupNode(t, 0xc3, admin)
	c.svc.CatchupPeerUp(ctx, peer)
	other := revoke(t, adminKey, admin, grantID(10))
	if err := c.svc.HandleCatchup(ctx, peer, offerOf(t, other)); err != nil {
		t.Fatal(err)
	}
	c.next(t)
	if err := c.svc.HandleCatchup(ctx, peer, catchupMsg(t, CatchupMessage{Batch: &[]json.RawMessage{}})); err != nil {
		t.Fatal(err)
	}
	c.quiet(t)
}

// TestDecodeCatchup: every malformed revocation_sync message is refused with its code.
func TestDecodeCatchup(t *testing.T) {
	r, admin := goldenRevocation(t)
	g := r.Grant
	rev, _ := EncodeRevocationMessage(r, nil)
	for _, tc := range []struct {
		name, msg string
		code      reason.Code
	}{
		{"empty", ``, reason.Malformed},
		{"not JSON", `catch me up`, reason.Malformed},
		{"version 2", `{"v":2,"want":["` + g + `"]}`, reason.UnknownVersion},
		{"nothing", `{"v":1}`, reason.Malformed},
		{"null want", `{"v":1,"want":null}`, reason.Malformed},
		{"two kinds", `{"v":1,"want":["` + g + `"],"batch":[]}`, reason.Malformed},
		{"unknown field", `{"v":1,"want":["` + g + `"],"since":0}`, reason.Malformed},
		{"trailing data", `{"v":1,"want":["` + g + `"]}{}`, reason.Malformed},
		{"empty want", `{"v":1,"want":[]}`, reason.Malformed},
		{"empty offer", `{"v":1,"offer":[]}`, reason.Malformed},
		{"bad grant ID", `{"v":1,"want":["x"]}`, reason.Malformed},
		{"duplicate want", `{"v":1,"want":["` + g + `","` + g + `"]}`, reason.Malformed},
		{"offer: bad issuer", `{"v":1,"offer":[{"grant":"` + g + `","issuer":"ed25519:x"}]}`, reason.Malformed},
		{"offer: duplicate", `{"v":1,"offer":[{"grant":"` + g + `","issuer":"` + admin.String() + `"},{"grant":"` + g + `","issuer":"` + admin.String() + `"}]}`, reason.Malformed},
		{"batch: not a revocation message", `{"v":1,"batch":[{"v":1}]}`, reason.Malformed},
		{"batch: revocation message version 2", `{"v":1,"batch":[` + strings.Replace(string(rev), `"v":1`, `"v":2`, 1) + `]}`, reason.UnknownVersion},
		{"batch: duplicate", `{"v":1,"batch":[` + string(rev) + `,` + string(rev) + `]}`, reason.Malformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := DecodeCatchup([]byte(tc.msg)); reason.Of(err) != tc.code {
				t.Fatalf("decode %.200q: %v (code %q), want %s", tc.msg, err, reason.Of(err), tc.code)
			}
		})
	}
	for _, ok := range []string{
		`{"v":1,"want":["` + g + `"]}`,
		`{"v":1,"offer":[{"grant":"` + g + `","issuer":"` + admin.String() + `"}]}`,
		`{"v":1,"batch":[]}`,
		`{"v":1,"batch":[` + string(rev) + `]}`,
	} {
		if _, _, err := DecodeCatchup([]byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

// FuzzDecodeCatchup: the decoder never panics; what it accepts is within the bounds and re-encodes to
// a message that decodes to the same content.
func FuzzDecodeCatchup(f *testing.F) {
	f.Add([]byte(`{"v":1,"want":["EREREREREREREREREREREQ"]}`))
	f.Add([]byte(`{"v":1,"offer":[{"grant":"EREREREREREREREREREREQ","issuer":"ed25519:cF-6wB9VGYmfQ3vELkAlWumrVL_wDeNDOvfWh9nnGtU"}]}`))
	f.Add([]byte(`{"v":1,"batch":[]}`))
	f.Add([]byte(`{"v":1,"batch":[{"v":1,"revocation":"{\"v\":2}"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, revs, err := DecodeCatchup(b)
		if err != nil {
			return
		}
		switch {
		case m.Offer != nil && (len(*m.Offer) == 0 || len(*m.Offer) > transports.MaxCatchupOffer),
			m.Want != nil && (len(*m.Want) == 0 || len(*m.Want) > transports.MaxCatchupWant),
			m.Batch != nil && (len(*m.Batch) > transports.MaxCatchupWant || len(revs) != len(*m.Batch)):
			t.Fatalf("accepted out of bounds: %s", b)
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, revs2, err := DecodeCatchup(again)
		if err != nil {
			t.Fatalf("re-encoded message refused: %v\n%s", err, again)
		}
		a1, _ := json.Marshal(m2)
		if !bytes.Equal(again, a1) || len(revs) != len(revs2) {
			t.Fatalf("re-encoding changed the message:\n%s\n%s", again, a1)
		}
		for i := range revs {
			if revs[i] != revs2[i] {
				t.Fatalf("revocation %d changed: %+v %+v", i, revs[i], revs2[i])
			}
		}
	})
}

const catchupGoldenFile = "testdata/catchup-vector.txt"

// TestGoldenCatchupMessages: the offer, want and batch of docs/protocol.md "Catch-up of revocations"
// for the golden revocation, byte for byte; each decodes, and the batch's revocation verifies for an
// agent that lists the administrator.
func TestGoldenCatchupMessages(t *testing.T) {
	r, admin := goldenRevocation(t)
	offer, want := offerOf(t, r), catchupMsg(t, CatchupMessage{Want: &[]string{r.Grant}})
	batch := batchOf(t, r)
	for _, m := range [][]byte{offer, want, batch} {
		if _, _, err := DecodeCatchup(m); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
	}
	_, revs, _ := DecodeCatchup(batch)
	if err := authorizer(t, admin).VerifyRevocation(revs[0]); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "message type: %s\n", envelope.RevocationSync)
	fmt.Fprintf(&b, "administrator key: Ed25519 seed b0 x 32; agent ID %s\n", admin)
	fmt.Fprintf(&b, "revoked grant: %s; issued 1767225600 (2026-01-01T00:00:00Z)\n", r.Grant)
	fmt.Fprintf(&b, "offer (%d bytes):\n%s\n", len(offer), offer)
	fmt.Fprintf(&b, "want (%d bytes):\n%s\n", len(want), want)
	fmt.Fprintf(&b, "batch (%d bytes):\n%s\n", len(batch), batch)
	docHasVector(t, checkGolden(t, catchupGoldenFile, "catch-up messages", b.String()))
}

// docHasVector fails unless docs/protocol.md quotes the vector file's text.
func docHasVector(t *testing.T, vector []byte) {
	t.Helper()
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, vector) {
		t.Error("docs/protocol.md does not quote the vector as generated: copy it from testdata")
	}
}

// TestCatchupNotRepublished: revocations learnt by catch-up are not published on gossip again (a
// returning agent would flood the network with everything it missed); one recorded otherwise is.
func TestCatchupNotRepublished(t *testing.T) {
	adminKey := fixedSigner(t, 0xb0)
	admin := identity.NewID(adminKey.Public())
	b := newCatchupNode(t, 0xc1, admin)
	c := newCatchupNode(t, 0xc2, admin)
	g := &fakeGossip{fakeDHT: fakeDHT{name: "libp2p", answer: map[string][]byte{}, putEvent: make(chan struct{}, 16)}, msgs: map[string][][]byte{}}
	c.svc.cfg.Networks = func() []Network { return []Network{{T: g}} }
	c.az.OnRevocation(c.svc.RevocationHook(ctx, func(string) []byte { return nil }))
	for i := range 3 {
		if err := b.az.AddRevocation(ctx, revoke(t, adminKey, admin, grantID(i))); err != nil {
			t.Fatal(err)
		}
	}
	b.svc.CatchupPeerUp(ctx, c.id.String())
	pump(t, b, c)
	if c.result("accept") != 3 {
		t.Fatalf("caught up %v, want 3", c.result("accept"))
	}
	if err := c.az.AddRevocation(ctx, revoke(t, adminKey, admin, grantID(9))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the revocation recorded otherwise is published", func() bool { return len(g.published(transports.TopicRevocations)) >= 1 })
	time.Sleep(100 * time.Millisecond)
	if n := len(g.published(transports.TopicRevocations)); n != 1 {
		t.Fatalf("%d revocations published, want only the one not learnt by catch-up", n)
	}
}
