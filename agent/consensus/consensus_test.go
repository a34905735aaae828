package consensus

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	bolt "go.etcd.io/bbolt"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type peer struct {
	s  keystore.Signer
	id identity.ID
}

func newPeer(t testing.TB) peer {
	t.Helper()
	s, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	return peer{s, identity.NewID(s.Public())}
}

type world struct {
	db  *bolt.DB
	rep *reputation.Store
	ev  *EvidenceStore
	now time.Time
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{now: t0}
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	w.db = db
	if w.rep, err = reputation.NewStore(context.Background(), db, reputation.Config{}, reputation.Options{Now: func() time.Time { return w.now }}); err != nil {
		t.Fatal(err)
	}
	if w.ev, err = NewEvidenceStore(db); err != nil {
		t.Fatal(err)
	}
	return w
}

// level drives p to a level with recorded observations.
func (w *world) level(t *testing.T, p identity.ID, l reputation.Level) {
	t.Helper()
	ctx := context.Background()
	switch l {
	case reputation.Trusted, reputation.Super:
		for i := 0; w.rep.Level(p) != l && i < 200; i++ {
			if err := w.rep.Record(ctx, reputation.Observation{Peer: p, Kind: reputation.Completed, ResponseTime: time.Second}, reputation.Observation{Peer: p, Kind: reputation.Agreed}); err != nil {
				t.Fatal(err)
			}
		}
	case reputation.Restricted:
		for i := 0; w.rep.Level(p) != l && i < 200; i++ {
			if err := w.rep.Record(ctx, reputation.Observation{Peer: p, Kind: reputation.Completed, ResponseTime: time.Second}, reputation.Observation{Peer: p, Kind: reputation.Dissented}); err != nil {
				t.Fatal(err)
			}
		}
	case reputation.Blocked:
		if err := w.rep.Block(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if got := w.rep.Level(p); got != l {
		t.Fatalf("could not bring peer to %s (it is %s)", l, got)
	}
}

func peers(t *testing.T, n int) []identity.ID {
	out := make([]identity.ID, n)
	for i := range out {
		out[i] = newPeer(t).id
	}
	return out
}

func TestSelect(t *testing.T) {
	w := newWorld(t)
	rng := rand.New(rand.NewChaCha8([32]byte{1}))
	est := peers(t, 6)
	for _, p := range est {
		w.level(t, p, reputation.Trusted)
	}
	fresh := peers(t, 10)
	bad := peers(t, 2)
	w.level(t, bad[0], reputation.Restricted)
	w.level(t, bad[1], reputation.Blocked)
	all := append(append(append([]identity.ID{}, est...), fresh...), bad...)
	isIn := func(set []identity.ID, id identity.ID) bool {
		for _, x := range set {
			if x.Equal(id) {
				return true
			}
		}
		return false
	}
	counts := map[string]int{}
	for round := 0; round < 200; round++ {
		sel, err := Select(w.rep, all, 5, rng, SelectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nFresh := 0
		for _, id := range sel {
			if isIn(bad, id) {
				t.Fatalf("selected a restricted or blocked peer")
			}
			if isIn(fresh, id) {
				nFresh++
			}
			counts[id.String()]++
		}
		if len(sel) != 5 || nFresh != 1 {
			t.Fatalf("selection of %d with %d new peers, want 5 with 1", len(sel), nFresh)
		}
	}
	// Every established peer gets work (weighted sampling, not always the same top k).
	for _, p := range est {
		if counts[p.String()] < 50 {
			t.Errorf("established peer chosen %d/200 times", counts[p.String()])
		}
	}
	// Too few established peers: New peers fill in.
	sel, err := Select(w.rep, append(est[:2:2], fresh...), 5, rng, SelectOptions{})
	if err != nil || len(sel) != 5 {
		t.Fatalf("fill with new peers: %d, %v", len(sel), err)
	}
	// Not enough peers at all.
	sel, err = Select(w.rep, append(bad, est[0]), 3, rng, SelectOptions{})
	if !errors.Is(err, ErrNotEnoughPeers) || len(sel) != 1 {
		t.Fatalf("not enough: %d, %v", len(sel), err)
	}
	// ExploreSlots -1: no New peer while established ones suffice.
	sel, _ = Select(w.rep, all, 5, rng, SelectOptions{ExploreSlots: -1})
	for _, id := range sel {
		if isIn(fresh, id) {
			t.Fatal("explore slots disabled but a new peer was selected")
		}
	}
	// Deterministic for a given seed.
	a, _ := Select(w.rep, all, 5, rand.New(rand.NewChaCha8([32]byte{9})), SelectOptions{})
	b, _ := Select(w.rep, all, 5, rand.New(rand.NewChaCha8([32]byte{9})), SelectOptions{})
	for i := range a {
		if !a[i].Equal(b[i]) {
			t.Fatal("same seed, different selection")
		}
	}
}

func result(p identity.ID, payload string) Result {
	return Result{Peer: p, Digest: DigestOf([]byte(payload)), Signed: []byte("signed:" + payload), Signature: []byte("sig-" + p.String()[:12]), ResponseTime: time.Second}
}

func TestDecideByReputation(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	ps := peers(t, 5)
	for _, p := range ps {
		w.level(t, p, reputation.Trusted)
	}
	v := &Voter{Rep: w.rep, Evidence: w.ev, Now: func() time.Time { return w.now }}
	before := w.rep.Report(ps[4])
	// 4 agree, 1 dissents: accepted; the dissent is evidence and costs reputation.
	res := []Result{result(ps[0], "A"), result(ps[1], "A"), result(ps[2], "A"), result(ps[3], "A"), result(ps[4], "B")}
	out, err := v.Decide(ctx, "t1", ps, res)
	if err != nil {
		t.Fatal(err)
	}
	if !out.Accepted || out.Digest != DigestOf([]byte("A")) || len(out.Agreeing) != 4 || len(out.Dissenting) != 1 || out.Err() != nil {
		t.Fatalf("outcome %+v", out)
	}
	if out.Share < 0.75 || out.Share > 0.85 {
		t.Fatalf("share %.3f, want about 4/5", out.Share)
	}
	after := w.rep.Report(ps[4])
	if !(after.Integrity < before.Integrity) {
		t.Fatalf("dissenter's integrity %.3f → %.3f: it must fall", before.Integrity, after.Integrity)
	}
	es, err := w.ev.ByPeer(ps[4])
	if err != nil || len(es) != 1 || es[0].Kind != "dissent" || !bytes.Equal(es[0].Signed, []byte("signed:B")) || es[0].Accepted == "" {
		t.Fatalf("evidence: %+v, %v", es, err)
	}
	if es, _ := w.ev.ByPeer(ps[0]); len(es) != 0 {
		t.Fatal("evidence stored against an agreeing peer")
	}

	// 3 against 2 equally trusted peers: 60% < 2/3: no quorum; nobody gains or loses on agreement, and
	// nothing is evidence.
	ps = peers(t, 5)
	for _, p := range ps {
		w.level(t, p, reputation.Trusted)
	}
	n := w.ev.Count()
	res = []Result{result(ps[0], "A"), result(ps[1], "A"), result(ps[2], "A"), result(ps[3], "B"), result(ps[4], "B")}
	out, err = v.Decide(ctx, "t2", ps, res)
	if err != nil {
		t.Fatal(err)
	}
	if out.Accepted || !errors.Is(out.Err(), ErrNoQuorum) || !strings.Contains(out.Reason, "quorum") || len(out.Dissenting) != 0 || w.ev.Count() != n {
		t.Fatalf("3 vs 2: %+v", out)
	}
	// Silence counts against the quorum and as a failure: 3 of 5 answer alike, 2 stay silent.
	before = w.rep.Report(ps[4])
	out, _ = v.Decide(ctx, "t3", ps, res[:3])
	if out.Accepted || len(out.Silent) != 2 {
		t.Fatalf("silent: %+v", out)
	}
	if f := factorOf(w.rep.Report(ps[4]), reputation.FactorCompletion); f >= factorOf(before, reputation.FactorCompletion) {
		t.Fatal("a silent peer's completion rate did not fall")
	}
	// One peer alone cannot decide (MinAgree 2), even with all the weight.
	out, _ = v.Decide(ctx, "t4", ps[:1], []Result{result(ps[0], "A")})
	if !out.Accepted { // k=1: MinAgree is capped at k
		t.Fatalf("k=1: %+v", out)
	}
	v2 := &Voter{Rep: w.rep, Quorum: 0.5}
	if _, err := v2.Decide(ctx, "t5", ps, res); err == nil || !strings.Contains(err.Error(), "(0.5, 1]") {
		t.Fatalf("quorum 0.5: %v", err)
	}
	v3 := &Voter{Rep: w.rep, MinAgree: 3}
	out, _ = v3.Decide(ctx, "t6", ps[:3], []Result{result(ps[0], "A"), result(ps[1], "A")})
	if out.Accepted || !strings.Contains(out.Reason, "at least 3") {
		t.Fatalf("MinAgree 3: %+v", out)
	}
	// Results from peers that were not selected are ignored.
	outsider := newPeer(t).id
	out, _ = v.Decide(ctx, "t7", ps[:2], []Result{result(ps[0], "A"), result(outsider, "B"), result(ps[1], "A")})
	if !out.Accepted || len(out.Tallies) != 1 {
		t.Fatalf("outsider's result counted: %+v", out)
	}
}

func factorOf(r reputation.Report, name string) float64 {
	for _, f := range r.Factors {
		if f.Name == name {
			return f.Value
		}
	}
	return -1
}

func TestDecideEquivocation(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	ps := peers(t, 4)
	for _, p := range ps {
		w.level(t, p, reputation.Trusted)
	}
	v := &Voter{Rep: w.rep, Evidence: w.ev}
	res := []Result{result(ps[0], "A"), result(ps[1], "A"), result(ps[2], "A"), result(ps[3], "A"), result(ps[3], "B")}
	out, err := v.Decide(ctx, "t", ps, res)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Equivocating) != 1 || !out.Equivocating[0].Equal(ps[3]) {
		t.Fatalf("equivocation not detected: %+v", out)
	}
	es, _ := w.ev.ByPeer(ps[3])
	if len(es) != 2 {
		t.Fatalf("equivocation evidence: %d records, want both results", len(es))
	}
	if !out.Accepted || len(out.Tallies[0].Peers) != 3 {
		t.Fatalf("the equivocator's vote must be void: %+v", out)
	}
}

func TestDecideByStakeAndHybrid(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	admin := newPeer(t)
	ps := peers(t, 4)
	for _, p := range ps[:3] {
		w.level(t, p, reputation.Trusted)
	}
	w.level(t, ps[3], reputation.Restricted)
	// ps[3] holds most of the stake but is Restricted.
	table, err := SignStakeTable(ctx, admin.s, admin.id, []Stake{{ps[0].String(), 10}, {ps[1].String(), 10}, {ps[2].String(), 10}, {ps[3].String(), 100}}, t0, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyStakeTable(table, []identity.ID{admin.id}, func(id identity.ID) (identity.State, error) { return identity.SignedAtOnly(id), nil }, t0); err != nil {
		t.Fatal(err)
	}
	res := []Result{result(ps[0], "A"), result(ps[1], "A"), result(ps[2], "A"), result(ps[3], "B")}

	v := &Voter{Rep: w.rep, Mode: ByStake}
	if _, err := v.Decide(ctx, "s0", ps, res); err == nil || !strings.Contains(err.Error(), "no stake table") {
		t.Fatalf("stake mode without a table: %v", err)
	}
	v.SetStakes(&table)
	out, err := v.Decide(ctx, "s1", ps, res)
	if err != nil {
		t.Fatal(err)
	}
	// By stake alone, B holds 100/130 of the weight, but one peer cannot decide alone (MinAgree 2).
	if out.Accepted || out.Share < 0.76 || out.Weights[ps[3].String()] != 100 || !strings.Contains(out.Reason, "only 1 peer(s) agree") {
		t.Fatalf("stake vote: %+v", out)
	}
	v1 := &Voter{Rep: w.rep, Mode: ByStake, MinAgree: 1}
	v1.SetStakes(&table)
	if out, _ = v1.Decide(ctx, "s1b", ps, res); !out.Accepted || out.Digest != DigestOf([]byte("B")) {
		t.Fatalf("stake vote, MinAgree 1: %+v", out)
	}
	// Hybrid: stake counts only with reputation; the Restricted whale weighs zero.
	v.Mode = Hybrid
	out, err = v.Decide(ctx, "s2", ps, res)
	if err != nil {
		t.Fatal(err)
	}
	if !out.Accepted || out.Digest != DigestOf([]byte("A")) || out.Weights[ps[3].String()] != 0 {
		t.Fatalf("hybrid vote: %+v", out)
	}
	// Reputation mode on the same results: A as well.
	v.Mode = ByReputation
	if out, _ = v.Decide(ctx, "s3", ps, res); !out.Accepted || out.Digest != DigestOf([]byte("A")) {
		t.Fatalf("reputation vote: %+v", out)
	}
}

func TestStakeTable(t *testing.T) {
	ctx := context.Background()
	admin, other := newPeer(t), newPeer(t)
	a, b := newPeer(t).id, newPeer(t).id
	resolve := func(id identity.ID) (identity.State, error) { return identity.SignedAtOnly(id), nil }
	table, err := SignStakeTable(ctx, admin.s, admin.id, []Stake{{a.String(), 5}, {b.String(), 7}}, t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if table.Amount(a) != 5 || table.Amount(b) != 7 || table.Amount(admin.id) != 0 {
		t.Fatal("Amount")
	}
	back, err := DecodeStakeTable(table.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyStakeTable(back, []identity.ID{admin.id}, resolve, t0); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		admins []identity.ID
		mutate func(*StakeTable)
		now    time.Time
		want   string
	}{
		{"not an administrator", []identity.ID{other.id}, nil, t0, "not a configured system administrator"},
		{"expired", []identity.ID{admin.id}, nil, t0.Add(time.Hour), "expired"},
		{"amount changed", []identity.ID{admin.id}, func(s *StakeTable) { s.Stakes[0].Amount = 1000 }, t0, "signature"},
		// Issue 20 finding 8: a table dated in the future beyond the skew (signed at t0, seen an hour before).
		{"issued in the future", []identity.ID{admin.id}, nil, t0.Add(-time.Hour), "ahead of this agent's clock"},
	}
	for _, c := range cases {
		tb := back
		tb.Stakes = append([]Stake(nil), back.Stakes...)
		if c.mutate != nil {
			c.mutate(&tb)
		}
		if err := VerifyStakeTable(tb, c.admins, resolve, c.now); !errors.Is(err, ErrStakeTable) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	s := string(table.Encode())
	for _, c := range []struct{ name, in, want string }{
		{"unsorted", strings.Replace(s, table.Stakes[0].Agent, "x", 1), "agent ID"},
		{"zero stake", strings.Replace(s, `"amount":5`, `"amount":0`, 1), "positive"},
		{"negative", strings.Replace(s, `"amount":5`, `"amount":-5`, 1), "cannot unmarshal"},
		{"null stakes", s[:strings.Index(s, `"stakes":`)] + `"stakes":null,` + s[strings.Index(s, `"sig":`):], "must be a list"},
		{"unknown field", strings.Replace(s, `"v":1`, `"v":1,"q":1`, 1), "unknown field"},
		{"whitespace", strings.Replace(s, `"v":1`, `"v": 1`, 1), "canonical"},
	} {
		if _, err := DecodeStakeTable([]byte(c.in)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// Duplicates are refused.
	dup := table
	dup.Stakes = []Stake{table.Stakes[0], table.Stakes[0]}
	if _, err := DecodeStakeTable(dup.Encode()); err == nil || !strings.Contains(err.Error(), "no duplicates") {
		t.Fatalf("duplicate entries: %v", err)
	}
}

// FuzzDecodeStakeTable: never panics; what it accepts encodes back to the same bytes.
func FuzzDecodeStakeTable(f *testing.F) {
	admin, a := newPeer(f), newPeer(f)
	table, err := SignStakeTable(context.Background(), admin.s, admin.id, []Stake{{a.id.String(), 3}}, t0, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(table.Encode())
	f.Add([]byte(`{"v":1,"stakes":[]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		tb, err := DecodeStakeTable(in)
		if err != nil {
			return
		}
		if !bytes.Equal(tb.Encode(), in) {
			t.Fatalf("accepted %q, encodes as %q", in, tb.Encode())
		}
	})
}

// BenchmarkDecide is one k=5 decision in reputation mode with one dissent (evidence and reputation written
// to bbolt), against the baseline of Select alone (k=3: the dissenter is Restricted by then).
func BenchmarkDecide(b *testing.B) {
	ctx := context.Background()
	db, err := bolt.Open(filepath.Join(b.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	rep, err := reputation.NewStore(ctx, db, reputation.Config{}, reputation.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ev, _ := NewEvidenceStore(db)
	ps := make([]identity.ID, 5)
	for i := range ps {
		ps[i] = newPeer(b).id
	}
	v := &Voter{Rep: rep, Evidence: ev}
	res := []Result{result(ps[0], "A"), result(ps[1], "A"), result(ps[2], "A"), result(ps[3], "A"), result(ps[4], "B")}
	b.Run("decide-k5", func(b *testing.B) {
		for b.Loop() {
			if _, err := v.Decide(ctx, "t", ps, res); err != nil {
				b.Fatal(err)
			}
		}
	})
	rng := rand.New(rand.NewChaCha8([32]byte{}))
	b.Run("baseline-select-k3-of-5", func(b *testing.B) {
		for b.Loop() {
			if _, err := Select(rep, ps, 3, rng, SelectOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
