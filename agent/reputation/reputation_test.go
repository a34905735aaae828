package reputation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

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

// ref is the unit tests' stand-in for a task reference (the daemon checks the subject's signed result):
// it names the giver, the subject and the task.
func ref(giver, subject identity.ID, task string) []byte {
	return []byte("ref:" + giver.String() + ":" + subject.String() + ":" + task)
}

func checkRef(_ context.Context, f *Feedback) error {
	b, err := f.RefBytes()
	if err != nil {
		return err
	}
	if string(b) != "ref:"+f.Giver+":"+f.Subject+":"+f.Task {
		return errors.New("the reference is not of this task between giver and subject")
	}
	return nil
}

type env struct {
	now     time.Time
	path    string
	store   *Store
	changes []Change
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	e := &env{now: t0, path: filepath.Join(t.TempDir(), "state.db")}
	e.open(t, cfg)
	return e
}

func (e *env) open(t *testing.T, cfg Config) {
	t.Helper()
	s, err := Open(context.Background(), e.path, cfg, Options{Now: func() time.Time { return e.now }, OnChange: func(c Change) { e.changes = append(e.changes, c) },
		CheckTask: checkRef})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e.store = s
}

// task records one task outcome for p: completed in rt, and agreed (good) or dissented.
func (e *env) task(t *testing.T, p identity.ID, good bool, rt time.Duration) {
	t.Helper()
	k := Agreed
	if !good {
		k = Dissented
	}
	if err := e.store.Record(context.Background(), Observation{Peer: p, Kind: Completed, ResponseTime: rt}, Observation{Peer: p, Kind: k}); err != nil {
		t.Fatal(err)
	}
}

func TestLevelTransitionsWithHysteresis(t *testing.T) {
	th, m := DefaultThresholds(), DefaultMinEvidence()
	cases := []struct {
		from  Level
		score float64
		n     float64
		want  Level
	}{
		{New, 0.80, 20, Trusted},
		{New, 0.80, 5, New}, // not enough evidence
		{New, 0.70, 20, New},
		{Trusted, 0.70, 20, Trusted}, // between leave (0.65) and enter (0.75): stays
		{Trusted, 0.64, 20, New},
		{Trusted, 0.93, 100, Super},
		{Trusted, 0.93, 30, Trusted}, // Super needs more evidence
		{Super, 0.88, 100, Super},    // between leave (0.85) and enter (0.92): stays
		{Super, 0.84, 100, Trusted},
		{Super, 0.60, 100, New},
		{New, 0.30, 10, Restricted},
		{New, 0.30, 4, New},
		{Trusted, 0.30, 10, Restricted},
		{Restricted, 0.40, 10, Restricted}, // between enter (0.35) and leave (0.45): stays
		{Restricted, 0.46, 10, New},
		{Restricted, 0.10, 20, Blocked},
		{Restricted, 0.10, 5, Restricted},
		{New, 0.05, 20, Restricted}, // Blocked only from Restricted ("continued issues")
		{Blocked, 0.99, 1000, Blocked},
	}
	for _, c := range cases {
		if got := th.next(c.from, c.score, c.n, m); got != c.want {
			t.Errorf("next(%s, score %.2f, evidence %.0f) = %s, want %s", c.from, c.score, c.n, got, c.want)
		}
	}
	bad := th
	bad.TrustedLeave = 0.8 // above TrustedEnter: no hysteresis
	if err := bad.validate(); err == nil || !strings.Contains(err.Error(), "trusted_leave < trusted_enter") {
		t.Fatalf("validate: %v", err)
	}
	if _, err := Open(context.Background(), filepath.Join(t.TempDir(), "x.db"), Config{Thresholds: bad}, Options{}); err == nil {
		t.Fatal("Open accepted thresholds without hysteresis")
	}
}

func TestScoreFactorsAndLevels(t *testing.T) {
	e := newEnv(t, Config{})
	good, bad, slow := newPeer(t), newPeer(t), newPeer(t)
	r := e.store.Report(good.id)
	if r.Level != New || r.Score != 0.5 || r.Evidence != 0 {
		t.Fatalf("unknown peer: %+v", r)
	}
	for i := 0; i < 10; i++ {
		e.task(t, good.id, true, 500*time.Millisecond)
		e.task(t, slow.id, true, 8*time.Second)
		e.task(t, bad.id, i%3 != 0, 500*time.Millisecond)
	}
	rg, rs, rb := e.store.Report(good.id), e.store.Report(slow.id), e.store.Report(bad.id)
	if rg.Level != Trusted || rg.Integrity != 1 {
		t.Errorf("good peer: %s score %.3f integrity %.3f", rg.Level, rg.Score, rg.Integrity)
	}
	if rb.Level != Restricted || rb.Integrity > 0.4 {
		t.Errorf("peer wrong 1/3 of the time: %s score %.3f integrity %.3f", rb.Level, rb.Score, rb.Integrity)
	}
	if !(rs.Score < rg.Score) || factor(rs, FactorResponseTime).Value != 0.25 {
		t.Errorf("slow peer: score %.3f (good %.3f), response factor %.3f (want 2s/8s = 0.25)", rs.Score, rg.Score, factor(rs, FactorResponseTime).Value)
	}
	for _, name := range []string{FactorCompletion, FactorResponseTime, FactorContribution, FactorErrorRate, FactorFeedback} {
		if factor(rg, name).Detail == "" {
			t.Errorf("factor %s missing from the report", name)
		}
	}
	// Completion: a peer that fails tasks loses on that factor only.
	flaky := newPeer(t)
	for i := 0; i < 6; i++ {
		if err := e.store.Record(context.Background(), Observation{Peer: flaky.id, Kind: Failed}); err != nil {
			t.Fatal(err)
		}
	}
	if f := factor(e.store.Report(flaky.id), FactorCompletion); math.Abs(f.Value-1.0/8) > 1e-9 || f.Evidence != 6 {
		t.Errorf("completion after 6 failures = %+v, want 1/8", f)
	}
	// Contribution can only raise the score.
	giver := newPeer(t)
	if err := e.store.Record(context.Background(), Observation{Peer: giver.id, Kind: Contributed, Units: 100}); err != nil {
		t.Fatal(err)
	}
	if f := factor(e.store.Report(giver.id), FactorContribution); math.Abs(f.Value-(0.5+0.5*(1-math.Exp(-1)))) > 1e-9 {
		t.Errorf("contribution factor = %.4f", f.Value)
	}
	// The level changes were reported, in order, with the score.
	var toTrusted, toRestricted bool
	for _, c := range e.changes {
		toTrusted = toTrusted || (c.Peer.Equal(good.id) && c.From == New && c.To == Trusted && c.Score >= 0.75)
		toRestricted = toRestricted || (c.Peer.Equal(bad.id) && c.To == Restricted && c.Score <= 0.35)
	}
	if !toTrusted || !toRestricted {
		t.Errorf("level changes not reported: %+v", e.changes)
	}
	// Invalid observations are refused.
	for _, o := range []Observation{{Kind: Completed}, {Peer: good.id, Kind: 99}, {Peer: good.id, Kind: Contributed, Units: math.NaN()}} {
		if err := e.store.Record(context.Background(), o); err == nil {
			t.Errorf("Record(%+v) accepted", o)
		}
	}
	// CountByLevel and List.
	counts := e.store.CountByLevel()
	if counts[Trusted] < 1 || counts[Restricted] != 1 {
		t.Errorf("CountByLevel = %v", counts)
	}
	if l := e.store.List(); len(l) != 5 || l[0].Score < l[len(l)-1].Score {
		t.Errorf("List: %d peers, not sorted by score", len(l))
	}
}

func factor(r Report, name string) Factor {
	for _, f := range r.Factors {
		if f.Name == name {
			return f
		}
	}
	return Factor{}
}

func TestDecayAndPersistence(t *testing.T) {
	e := newEnv(t, Config{HalfLife: 24 * time.Hour})
	p := newPeer(t)
	for i := 0; i < 4; i++ {
		e.task(t, p.id, i >= 2, time.Second)
	}
	if l := e.store.Level(p.id); l != Restricted {
		t.Fatalf("after 2 wrong results and 2 good ones: %s (score %.3f)", l, e.store.Report(p.id).Score)
	}
	before := e.store.Report(p.id)
	// One half-life later every counter is halved.
	e.now = e.now.Add(24 * time.Hour)
	after := e.store.Report(p.id)
	if math.Abs(after.Evidence-before.Evidence/2) > 1e-9 {
		t.Fatalf("evidence after one half-life = %.3f, want %.3f", after.Evidence, before.Evidence/2)
	}
	// Reopen: the record (level, counters) survived, still decaying from its stored time.
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	e.open(t, Config{HalfLife: 24 * time.Hour})
	if r := e.store.Report(p.id); r.Level != Restricted || math.Abs(r.Evidence-after.Evidence) > 1e-9 {
		t.Fatalf("after reopen: %s evidence %.3f, want restricted %.3f", r.Level, r.Evidence, after.Evidence)
	}
	// Decay pulls the score back toward neutral; Sweep notices and lets the peer out of Restricted.
	e.now = e.now.Add(10 * 24 * time.Hour)
	changes, err := e.store.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0].From != Restricted || changes[0].To != New {
		t.Fatalf("Sweep after 11 half-lives: %+v", changes)
	}
	// A corrupt record is an error naming it, not a silent reset.
	e.store.Close()
	db, err := bolt.Open(e.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPeers).Put([]byte("ed25519:junk"), []byte("{")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(context.Background(), e.path, Config{}, Options{}); err == nil || !strings.Contains(err.Error(), "ed25519:junk") {
		t.Fatalf("corrupt record: %v", err)
	}
}

func TestEffectsBlockAndAdmit(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, Config{})
	p := newPeer(t)
	eff := DefaultEffects()
	if !(eff[Restricted].RateMultiplier < eff[New].RateMultiplier && eff[New].RateMultiplier < eff[Trusted].RateMultiplier && eff[Trusted].RateMultiplier < eff[Super].RateMultiplier) {
		t.Error("rate multipliers must grow with trust")
	}
	if !(eff[Restricted].PuzzleBits > eff[New].PuzzleBits && eff[New].PuzzleBits > eff[Trusted].PuzzleBits) {
		t.Error("puzzles must be harder for New and Restricted peers")
	}
	if eff[Restricted].VoteMultiplier != 0 || eff[Blocked].VoteMultiplier != 0 || !eff[Blocked].RefuseHandshake || eff[Restricted].Selectable {
		t.Error("restricted and blocked peers must not vote or be selected; blocked ones are refused")
	}
	if err := e.store.Admit(p.id); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Block(ctx, p.id); err != nil {
		t.Fatal(err)
	}
	err := e.store.Admit(p.id)
	if !errors.Is(err, ErrBlocked) || !strings.Contains(err.Error(), p.id.String()) {
		t.Fatalf("Admit(blocked) = %v", err)
	}
	if w := e.store.Weight(p.id); w != 0 {
		t.Fatalf("blocked weight %v", w)
	}
	// Good behaviour does not unblock; only Unblock does.
	for i := 0; i < 20; i++ {
		e.task(t, p.id, true, time.Second)
	}
	if e.store.Level(p.id) != Blocked || !e.store.Report(p.id).Manual {
		t.Fatal("a blocked peer left Blocked by itself")
	}
	if err := e.store.Unblock(ctx, p.id); err != nil {
		t.Fatal(err)
	}
	if r := e.store.Report(p.id); r.Level != New || r.Evidence != 0 {
		t.Fatalf("after Unblock: %+v", r)
	}
	if err := e.store.Unblock(ctx, p.id); err == nil || !strings.Contains(err.Error(), "not blocked") {
		t.Fatalf("Unblock of a peer that is not blocked: %v", err)
	}
	last := e.changes[len(e.changes)-1]
	if !last.Manual || last.From != Blocked || last.To != New {
		t.Fatalf("manual change not reported: %+v", last)
	}
	// Continued issues: a Restricted peer that keeps failing goes to Blocked.
	q := newPeer(t)
	for i := 0; e.store.Level(q.id) != Blocked && i < 20; i++ {
		e.task(t, q.id, false, time.Second)
	}
	if e.store.Level(q.id) != Blocked || e.store.Report(q.id).Manual {
		t.Fatalf("a peer that is always wrong is %s", e.store.Level(q.id))
	}
	var path []Level
	for _, c := range e.changes {
		if c.Peer.Equal(q.id) {
			path = append(path, c.To)
		}
	}
	if len(path) != 2 || path[0] != Restricted || path[1] != Blocked {
		t.Fatalf("path to Blocked = %v, want [restricted blocked]", path)
	}
}

func TestFeedback(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, Config{})
	giver, subject, newcomer := newPeer(t), newPeer(t), newPeer(t)
	for i := 0; i < 10; i++ {
		e.task(t, giver.id, true, time.Second)
	}
	if e.store.Level(giver.id) != Trusted {
		t.Fatalf("giver is %s", e.store.Level(giver.id))
	}
	fb, err := SignFeedback(ctx, giver.s, giver.id, subject.id, "task-1", -100, ref(giver.id, subject.id, "task-1"), e.now)
	if err != nil {
		t.Fatal(err)
	}
	w, err := e.store.AddFeedback(ctx, fb)
	if err != nil {
		t.Fatal(err)
	}
	if want := e.store.Weight(giver.id); math.Abs(w-want) > 1e-9 || w < 0.7 {
		t.Fatalf("trusted giver's feedback weighed %.3f, want its vote weight %.3f", w, want)
	}
	f := factor(e.store.Report(subject.id), FactorFeedback)
	if math.Abs(f.Evidence-w) > 1e-9 || f.Value >= 0.5 || f.Weight <= 0 {
		t.Fatalf("feedback factor after one bad rating: %+v", f)
	}
	// The same feedback again (replay) is refused; so is the same task rated twice.
	if _, err := e.store.AddFeedback(ctx, fb); !errors.Is(err, ErrFeedbackRefused) {
		t.Fatalf("replayed feedback: %v", err)
	}
	fb2, _ := SignFeedback(ctx, giver.s, giver.id, subject.id, "task-1", 100, ref(giver.id, subject.id, "task-1"), e.now)
	if _, err := e.store.AddFeedback(ctx, fb2); !errors.Is(err, ErrFeedbackRefused) {
		t.Fatalf("second rating of the same task: %v", err)
	}
	// A New giver weighs little: score 0.5 × vote multiplier 0.1.
	fb3, _ := SignFeedback(ctx, newcomer.s, newcomer.id, subject.id, "task-1", 100, ref(newcomer.id, subject.id, "task-1"), e.now)
	if w, err := e.store.AddFeedback(ctx, fb3); err != nil || math.Abs(w-0.05) > 1e-9 {
		t.Fatalf("new giver's weight = %.3f, %v; want 0.05", w, err)
	}
	// A Blocked giver weighs nothing.
	if err := e.store.Block(ctx, newcomer.id); err != nil {
		t.Fatal(err)
	}
	fb4, _ := SignFeedback(ctx, newcomer.s, newcomer.id, subject.id, "task-2", 100, ref(newcomer.id, subject.id, "task-2"), e.now)
	if w, err := e.store.AddFeedback(ctx, fb4); err != nil || w != 0 {
		t.Fatalf("blocked giver's weight = %.3f, %v", w, err)
	}
	// Forged: the rating changed after signing.
	forged := fb
	forged.Task, forged.Rating = "task-9", 100
	if _, err := e.store.AddFeedback(ctx, forged); !errors.Is(err, keystore.ErrBadSignature) {
		t.Fatalf("forged feedback: %v", err)
	}
	// Too old and from the future.
	old, _ := SignFeedback(ctx, giver.s, giver.id, subject.id, "task-old", 100, ref(giver.id, subject.id, "task-old"), e.now.Add(-30*24*time.Hour))
	if _, err := e.store.AddFeedback(ctx, old); !errors.Is(err, ErrFeedbackRefused) {
		t.Fatalf("month-old feedback: %v", err)
	}
	future, _ := SignFeedback(ctx, giver.s, giver.id, subject.id, "task-future", 100, ref(giver.id, subject.id, "task-future"), e.now.Add(time.Hour))
	if _, err := e.store.AddFeedback(ctx, future); !errors.Is(err, ErrFeedbackRefused) {
		t.Fatalf("future feedback: %v", err)
	}
	// About oneself.
	if _, err := SignFeedback(ctx, giver.s, giver.id, giver.id, "t", 100, ref(giver.id, giver.id, "t"), e.now); err == nil {
		t.Fatal("self-feedback signed")
	}
}

func TestDecodeFeedback(t *testing.T) {
	ctx := context.Background()
	a, b := newPeer(t), newPeer(t)
	fb, err := SignFeedback(ctx, a.s, a.id, b.id, "task-42", 75, ref(a.id, b.id, "task-42"), t0)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeFeedback(fb.Encode())
	if err != nil || back != fb {
		t.Fatalf("round trip: %v", err)
	}
	s := string(fb.Encode())
	for _, c := range []struct{ name, in, want string }{
		{"unknown field", strings.Replace(s, `"v":2,`, `"v":2,"x":0,`, 1), "unknown field"},
		{"version 1 (no task reference)", strings.Replace(s, `"v":2,`, `"v":1,`, 1), "must carry the task reference"},
		{"no task reference", regexp.MustCompile(`"ref":"[^"]*"`).ReplaceAllString(s, `"ref":""`), "task reference"},
		{"rating out of range", strings.Replace(s, `"rating":75`, `"rating":101`, 1), "outside"},
		{"self", strings.Replace(s, b.id.String(), a.id.String(), 1), "itself"},
		{"empty task", strings.Replace(s, `"task-42"`, `""`, 1), "task ID"},
		{"non-canonical", strings.Replace(s, `"rating":75`, `"rating":75.0`, 1), "cannot unmarshal"},
		{"trailing", s + " x", "trailing"},
		{"whitespace", strings.Replace(s, `,"task"`, `, "task"`, 1), "canonical"},
	} {
		if _, err := DecodeFeedback([]byte(c.in)); err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func TestEviction(t *testing.T) {
	e := newEnv(t, Config{MaxPeers: 3})
	bad := newPeer(t)
	for i := 0; i < 5; i++ {
		e.task(t, bad.id, false, time.Second)
	}
	if e.store.Level(bad.id) != Restricted && e.store.Level(bad.id) != Blocked {
		t.Fatalf("bad peer is %s", e.store.Level(bad.id))
	}
	for i := 0; i < 5; i++ {
		e.task(t, newPeer(t).id, true, time.Second)
	}
	if n := len(e.store.List()); n != 3 {
		t.Fatalf("%d peers remembered, want 3", n)
	}
	if l := e.store.Level(bad.id); l != Restricted && l != Blocked {
		t.Fatalf("a restricted peer was forgotten (now %s)", l)
	}
}

// FuzzDecodeFeedback: DecodeFeedback never panics, and what it accepts encodes back to the same bytes.
func FuzzDecodeFeedback(f *testing.F) {
	a, b := newPeer(f), newPeer(f)
	fb, err := SignFeedback(context.Background(), a.s, a.id, b.id, "task-1", -3, ref(a.id, b.id, "task-1"), t0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(fb.Encode())
	f.Add([]byte(`{"v":2,"rating":0}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		fb, err := DecodeFeedback(in)
		if err != nil {
			return
		}
		if !bytes.Equal(fb.Encode(), in) {
			t.Fatalf("accepted %q, encodes as %q", in, fb.Encode())
		}
	})
}

// BenchmarkRecord is one task outcome written through to bbolt (one fsynced transaction), against the
// baseline of reading a report from memory.
func BenchmarkRecord(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "state.db"), Config{}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	p := newPeer(b)
	b.Run("record-fsync", func(b *testing.B) {
		for b.Loop() {
			if err := s.Record(ctx, Observation{Peer: p.id, Kind: Completed, ResponseTime: time.Second}, Observation{Peer: p.id, Kind: Agreed}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-report", func(b *testing.B) {
		for b.Loop() {
			_ = s.Report(p.id)
		}
	})
}

// TestDocsEffectsTable keeps the effects table of docs/authorization.md in step with DefaultEffects.
func TestDocsEffectsTable(t *testing.T) {
	doc, err := os.ReadFile("../../docs/authorization.md")
	if err != nil {
		t.Fatal(err)
	}
	name := map[Level]string{Super: "Super", Trusted: "Trusted", New: "New", Restricted: "Restricted", Blocked: "Blocked"}
	for l, e := range DefaultEffects() {
		bits := strconv.Itoa(int(e.PuzzleBits))
		if e.RefuseHandshake {
			bits = "—"
		}
		row := fmt.Sprintf("| %s | %s | %s | %s |", name[l], strconv.FormatFloat(e.RateMultiplier, 'g', -1, 64), bits, strconv.FormatFloat(e.VoteMultiplier, 'g', -1, 64))
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/authorization.md lacks %q", row)
		}
	}
	th, m := DefaultThresholds(), DefaultMinEvidence()
	for _, s := range []string{
		fmt.Sprintf("score ≥ %g and evidence ≥ %g", th.TrustedEnter, m.Trusted),
		fmt.Sprintf("score ≥ %g and evidence ≥ %g", th.SuperEnter, m.Super),
		fmt.Sprintf("score < %g", th.SuperLeave), fmt.Sprintf("score < %g", th.TrustedLeave),
		fmt.Sprintf("score ≤ %g and evidence ≥ %g", th.RestrictedEnter, m.Restricted),
		fmt.Sprintf("score > %g", th.RestrictedLeave),
		fmt.Sprintf("score ≤ %g and evidence ≥ %g", th.BlockedEnter, m.Blocked),
	} {
		if !strings.Contains(string(doc), s) {
			t.Errorf("docs/authorization.md lacks the threshold %q", s)
		}
	}
}

// TestFabricatedFeedback (issue 12 finding 6): a trusted giver's feedback about tasks it never had with the
// subject (references that are not the subject's result of that task for that giver) is refused and does
// not move the subject's level; feedback with real references counts, at most FeedbackPerHour per giver.
// Before the fix the fabricated feedback was counted (feedback factor evidence 18.4, value 0.05 after the
// twenty made-up ratings).
func TestFabricatedFeedback(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, Config{FeedbackPerHour: 25})
	giver, subject, other := newPeer(t), newPeer(t), newPeer(t)
	for i := 0; i < 60; i++ {
		e.task(t, giver.id, true, time.Second)
	}
	for i := 0; i < 12; i++ {
		e.task(t, subject.id, true, time.Second)
	}
	if e.store.Level(subject.id) != Trusted {
		t.Fatalf("subject is %s before the feedback", e.store.Level(subject.id))
	}
	for i := 0; i < 20; i++ {
		task := fmt.Sprintf("made-up-%d", i)
		// A reference of another pair's task, or of another task.
		bogus := ref(other.id, subject.id, task)
		if i%2 == 1 {
			bogus = ref(giver.id, subject.id, "some-other-task")
		}
		fb, err := SignFeedback(ctx, giver.s, giver.id, subject.id, task, -100, bogus, e.now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.AddFeedback(ctx, fb); !errors.Is(err, ErrFeedbackRefused) || !strings.Contains(err.Error(), "not confirmed") {
			t.Fatalf("fabricated feedback %d: %v, want ErrFeedbackRefused (not confirmed)", i, err)
		}
	}
	if l := e.store.Level(subject.id); l != Trusted {
		t.Fatalf("fabricated feedback moved the subject to %s", l)
	}
	if f := factor(e.store.Report(subject.id), FactorFeedback); f.Evidence != 0 {
		t.Fatalf("fabricated feedback counted: %+v", f)
	}
	// Real references count, up to the per-giver rate.
	for i := 0; i < 26; i++ {
		task := fmt.Sprintf("real-%d", i)
		fb, err := SignFeedback(ctx, giver.s, giver.id, subject.id, task, 50, ref(giver.id, subject.id, task), e.now)
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.store.AddFeedback(ctx, fb)
		if i < 25 && err != nil {
			t.Fatalf("feedback %d with a real reference: %v", i, err)
		}
		if i == 25 && (!errors.Is(err, ErrFeedbackRefused) || !strings.Contains(err.Error(), "this hour")) {
			t.Fatalf("feedback beyond the per-giver rate: %v", err)
		}
	}
	// A new hour gives the giver new slots.
	e.now = e.now.Add(time.Hour)
	fb, _ := SignFeedback(ctx, giver.s, giver.id, subject.id, "next-hour", 50, ref(giver.id, subject.id, "next-hour"), e.now)
	if _, err := e.store.AddFeedback(ctx, fb); err != nil {
		t.Fatalf("feedback in the next hour: %v", err)
	}
}

// TestOwnFeedback: feedback this agent gives (agentctl feedback) counts with full weight for its
// subject, once per task; a second rating of the same task is refused.
func TestOwnFeedback(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, Config{})
	self, subject := newPeer(t), newPeer(t)
	fb, err := SignFeedback(ctx, self.s, self.id, subject.id, "task-own", -100, ref(self.id, subject.id, "task-own"), e.now)
	if err != nil {
		t.Fatal(err)
	}
	before := e.store.Report(subject.id).Score
	if err := e.store.AddOwnFeedback(ctx, fb); err != nil {
		t.Fatal(err)
	}
	f := factor(e.store.Report(subject.id), FactorFeedback)
	if math.Abs(f.Evidence-1) > 1e-9 || f.Value >= 0.5 || e.store.Report(subject.id).Score >= before {
		t.Fatalf("after own negative feedback: factor %+v, score %v (was %v)", f, e.store.Report(subject.id).Score, before)
	}
	if err := e.store.AddOwnFeedback(ctx, fb); !errors.Is(err, ErrFeedbackRefused) {
		t.Fatalf("the same task rated twice: %v", err)
	}
	bad := fb
	bad.Rating = 101
	if err := e.store.AddOwnFeedback(ctx, bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("rating out of range: %v", err)
	}
}
