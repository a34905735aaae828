package discovery

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/vectors"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

var ctx = context.Background()

// agent is a test agent: an identity and an operational key certified by a delegation.
type agent struct {
	id    *agenttest.Identity
	op    keystore.Signer
	deleg []byte
}

func newAgent(t testing.TB, nb, na time.Time) *agent {
	t.Helper()
	a := &agent{id: agenttest.NewIdentity(t, keystore.Ed25519)}
	a.delegate(t, nb, na)
	return a
}

func (a *agent) delegate(t testing.TB, nb, na time.Time) {
	t.Helper()
	a.op = agenttest.Mem(t, keystore.Ed25519)
	enc, err := suite.GenerateEncryptionKey(suite.KEMX25519)
	if err != nil {
		t.Fatal(err)
	}
	d, err := delegation.Issue(ctx, a.id.Current(), a.id.State, delegation.Delegated, a.op.Public(), suite.KEMX25519, enc.Public(), nb, na)
	if err != nil {
		t.Fatal(err)
	}
	a.deleg = d.Encode()
}

// record makes a's signed record with seq, expiring at exp.
func (a *agent) record(t testing.TB, seq uint64, exp time.Time, mod ...func(*Record)) *Record {
	t.Helper()
	r := &Record{AgentID: a.id.ID().String(), Generation: a.id.State.Generation, Head: a.id.State.Head,
		PeerID: "12D3KooWExample", Addrs: []Addr{{"libp2p", "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWExample"}, {"tcp", "127.0.0.1:7000"}},
		Seq: seq, Expires: exp.Unix(), KeyLog: a.id.Log.Encode()}
	for _, f := range mod {
		f(r)
	}
	if err := Sign(ctx, a.op, a.deleg, r); err != nil {
		t.Fatal(err)
	}
	return r
}

func openCache(t testing.TB) *peers.Cache {
	t.Helper()
	c, err := peers.Open(filepath.Join(t.TempDir(), "peers.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestSignVerifyRoundTrip(t *testing.T) {
	now := agenttest.Epoch.Add(10 * time.Minute)
	a := newAgent(t, now.Add(-time.Minute), now.Add(time.Hour))
	r := a.record(t, 7, now.Add(30*time.Minute))
	raw := r.Encode()
	got, err := Verify(raw, Key(a.id.ID().String()), openCache(t), now)
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != 7 || len(got.Addrs) != 2 || got.AddrsOf("tcp")[0] != "127.0.0.1:7000" || got.PeerID != r.PeerID {
		t.Errorf("decoded %+v", got)
	}
	if string(got.Encode()) != string(raw) {
		t.Error("the encoding is not deterministic: decode then encode differs")
	}
	// Without a carried log, the cached one is used; with none cached the agent is unknown.
	bare := a.record(t, 8, now.Add(30*time.Minute), func(r *Record) { r.KeyLog = nil })
	cache := openCache(t)
	if _, err := Verify(bare.Encode(), Key(bare.AgentID), cache, now); reason.Of(err) != reason.UnknownPeer {
		t.Errorf("no log anywhere: %v, want unknown_peer", err)
	}
	if err := cache.CommitLog(a.id.ID(), &a.id.Log); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(bare.Encode(), Key(bare.AgentID), cache, now); err != nil {
		t.Errorf("cached log: %v", err)
	}
}

func TestBetter(t *testing.T) {
	now := agenttest.Epoch.Add(10 * time.Minute)
	a := newAgent(t, now.Add(-time.Minute), now.Add(time.Hour))
	low, high := a.record(t, 1, now.Add(time.Hour)), a.record(t, 2, now.Add(time.Minute))
	if !Better(high, low) || Better(low, high) {
		t.Error("the higher sequence must win whatever the expiry")
	}
	later := a.record(t, 1, now.Add(2*time.Hour))
	if !Better(later, low) {
		t.Error("equal sequences: the later expiry must win")
	}
	if Better(low, low) {
		t.Error("a record is not better than itself")
	}
	if err := CheckNewer(low, high); reason.Of(err) != reason.RecordStale {
		t.Errorf("lower sequence over a held higher one: %v, want record_stale", err)
	}
	if err := CheckNewer(high, low); err != nil {
		t.Errorf("higher sequence: %v", err)
	}
}

// Negative vectors (internal/vectors): records as data with the reason a verifier must refuse each with.
// Fields: input (the record), key (the DHT key it is checked under), now (Unix seconds), optionally
// cached-kel (a key event log the verifier has cached) and held (a record already held for the key).
// CUSTOS_UPDATE_VECTORS=1 regenerates them (new keys each time).
const vectorDir = "testdata/vectors"

func runVector(v *vectors.Vector) error {
	dir, err := os.MkdirTemp("", "discovery-vector")
	if err != nil {
		return reason.Wrap(reason.Internal, err, "temp dir")
	}
	defer os.RemoveAll(dir)
	cache, err := peers.Open(filepath.Join(dir, "peers.db"))
	if err != nil {
		return reason.Wrap(reason.Internal, err, "peer cache")
	}
	defer cache.Close()
	if kel, ok := v.Get("cached-kel"); ok {
		l, err := identity.DecodeLog(kel)
		if err != nil {
			return reason.Wrap(reason.Internal, err, "vector %s: cached-kel", v.Name)
		}
		st, err := l.Verify()
		if err != nil {
			return reason.Wrap(reason.Internal, err, "vector %s: cached-kel", v.Name)
		}
		if err := cache.CommitLog(st.ID, &l); err != nil {
			return reason.Wrap(reason.Internal, err, "vector %s: cached-kel", v.Name)
		}
	}
	now, err := strconv.ParseInt(v.String("now"), 10, 64)
	if err != nil {
		return reason.Wrap(reason.Internal, err, "vector %s: now", v.Name)
	}
	r, err := Verify(v.Input(), v.String("key"), cache, time.Unix(now, 0))
	if err != nil {
		return err
	}
	if h, ok := v.Get("held"); ok {
		held, err := Decode(h)
		if err != nil {
			return reason.Wrap(reason.Internal, err, "vector %s: held", v.Name)
		}
		return CheckNewer(r, held)
	}
	return nil
}

func TestNegativeVectors(t *testing.T) {
	vectors.Run(t, vectorDir, writeVectors, func(v *vectors.Vector) (string, error) {
		err := runVector(v)
		return string(reason.Of(err)), err
	})
}

func writeVectors(t *testing.T) {
	now := agenttest.Epoch.Add(10 * time.Minute)
	nb, na := now.Add(-time.Minute), now.Add(time.Hour)
	a := newAgent(t, nb, na)
	b := newAgent(t, nb, na)
	exp := now.Add(30 * time.Minute)
	key := Key(a.id.ID().String())
	var out []*vectors.Vector
	add := func(name, comment, expect, text string, r []byte, k string, extra ...[2][]byte) {
		v := vectors.New(name, comment, expect, text).Set("input", r).Set("key", []byte(k)).
			Set("now", []byte(strconv.FormatInt(now.Unix(), 10)))
		for _, e := range extra {
			v.Set(string(e[0]), e[1])
		}
		out = append(out, v)
	}
	good := a.record(t, 100, exp)
	add("ok", "a valid record (the one the others change)", "ok", "", good.Encode(), key)
	add("wrong-key", "a valid record of agent A stored under agent B's key", "record_key_mismatch", "was stored under", good.Encode(), Key(b.id.ID().String()))
	altered := a.record(t, 100, exp)
	altered.Addrs[0].Addr = "/ip4/203.0.113.9/tcp/4001/p2p/12D3KooWAttacker"
	add("altered-address", "an address changed after signing", "bad_signature", "not signed by its delegated operational key", altered.Encode(), key)
	stranger := a.record(t, 100, exp)
	stranger.Signature, _ = agenttest.Mem(t, keystore.Ed25519).Sign(ctx, stranger.SigningInput())
	add("wrong-signature", "signed by a key no delegation certifies", "bad_signature", "not signed by", stranger.Encode(), key)
	theft := b.record(t, 100, exp, func(r *Record) {
		r.AgentID, r.Generation, r.Head, r.KeyLog = a.id.ID().String(), a.id.State.Generation, a.id.State.Head, a.id.Log.Encode()
	})
	add("another-agents-id", "agent B claims agent A's ID (A's public log) with B's own delegation and signature", "delegation_invalid", "is for", theft.Encode(), key)
	foreignLog := b.record(t, 100, exp, func(r *Record) { r.AgentID = a.id.ID().String() })
	add("another-agents-log", "agent B claims agent A's ID but carries its own key event log", "key_log_invalid", "is of", foreignLog.Encode(), key)
	add("expired", "expired one second before now", "record_expired", "expired at", a.record(t, 100, now.Add(-time.Second)).Encode(), key)
	add("expires-now", "expiry equal to now (exclusive)", "record_expired", "expired at", a.record(t, 100, now).Encode(), key)
	add("too-long", "expires 25 hours ahead", "record_too_long", "more than", a.record(t, 100, now.Add(25*time.Hour)).Encode(), key)
	old := newAgent(t, now.Add(-3*time.Hour), now.Add(-time.Hour))
	add("expired-delegation", "signed by an operational key whose delegation expired an hour ago", "delegation_expired", "expired at",
		old.record(t, 100, exp).Encode(), Key(old.id.ID().String()))
	head := a.record(t, 100, exp, func(r *Record) { r.Head[0] ^= 1 })
	add("head-mismatch", "the head is not the carried log's", "record_head_mismatch", "names head", head.Encode(), key)
	rot := newAgent(t, nb, na)
	oldLog := rot.id.Log
	staleRec := rot.record(t, 100, exp)
	rot.id.Rotate(t)
	add("stale-head", "the carried key event log is one rotation behind the one the verifier has cached", "key_log_stale", "newest known",
		staleRec.Encode(), Key(rot.id.ID().String()), [2][]byte{[]byte("cached-kel"), rot.id.Log.Encode()})
	_ = oldLog
	fk := newAgent(t, nb, na)
	forked := fk.id.Fork(t)
	fk.id.Rotate(t)
	fk.delegate(t, nb, na)
	add("forked-log", "the carried log forks from the cached one (a compromise)", "key_log_fork", "forks",
		fk.record(t, 100, exp).Encode(), Key(fk.id.ID().String()), [2][]byte{[]byte("cached-kel"), forked.Encode()})
	add("lower-sequence", "a valid record with sequence 99 where sequence 100 is held", "record_stale", "already held",
		a.record(t, 99, exp).Encode(), key, [2][]byte{[]byte("held"), good.Encode()})
	enc := good.Encode()
	add("trailing", "one byte after the record", "malformed", "trailing", append(append([]byte{}, enc...), 0), key)
	add("truncated", "the last three bytes cut", "malformed", "ends inside", enc[:len(enc)-3], key)
	mut := func(f func(r *Record)) []byte {
		c := *good
		c.Addrs = append([]Addr(nil), good.Addrs...)
		f(&c)
		return c.Encode()
	}
	add("unknown-version", "version 2", "unknown_version", "version 2", mut(func(r *Record) { r.Version = 2 }), key)
	add("control-char-address", "an address with a newline", "malformed", "printable", mut(func(r *Record) { r.Addrs[1].Addr = "127.0.0.1:7000\nx" }), key)
	add("bad-transport", "a transport name with upper case", "malformed", "[a-z0-9-]", mut(func(r *Record) { r.Addrs[1].Transport = "TCP" }), key)
	add("no-signature", "an empty signature", "malformed", "signature is empty", mut(func(r *Record) { r.Signature = nil }), key)
	add("bad-agent-id", "an agent ID that does not parse", "malformed", "agent_id", mut(func(r *Record) { r.AgentID = "ed25519:xyz" }), key)
	many := mut(func(r *Record) {
		for range MaxAddrs {
			r.Addrs = append(r.Addrs, Addr{"tcp", "127.0.0.1:1"})
		}
	})
	add("too-many-addresses", "34 addresses (limit 32)", "malformed", "exceeds the limit", many, key)
	if err := vectors.WriteAll(vectorDir, out); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecode(f *testing.F) {
	vectors.Seed(f, vectorDir, nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			if reason.Of(err) == "" {
				t.Fatalf("an error without a reason code: %v", err)
			}
			return
		}
		// Whatever decodes re-encodes to the same bytes (one encoding per record).
		if string(r.Encode()) != string(b) {
			t.Fatalf("decode then encode differs for %x", b)
		}
	})
}
