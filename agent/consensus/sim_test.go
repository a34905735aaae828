package consensus

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	bolt "go.etcd.io/bbolt"
)

// The simulation of docs/reputation-simulation.md. Change a number here, change it there.
const (
	simSeed        = 20260301
	simHonest      = 10
	simMalicious   = 3  // wrong one time in three, each with its own wrong result
	simSybils      = 20 // fresh identities that join later and all return the same wrong result
	simK           = 5  // peers per task
	simPhase1      = 150
	simPhase2      = 250
	boundEstablish = 60  // by this task every honest peer is Trusted or Super and every malicious one Restricted or Blocked
	boundSybils    = 100 // within this many tasks after they join, every Sybil is Restricted or Blocked
)

type simKind int

const (
	honest simKind = iota
	malicious
	sybil
)

type simPeer struct {
	kind   simKind
	signer keystore.Signer
	id     identity.ID
	// first task at which the peer reached its final class (established / restricted)
	reached int
}

// simAgent derives a deterministic Ed25519 identity from the run's random stream.
func simAgent(t testing.TB, rng *rand.Rand) (keystore.Signer, identity.ID) {
	var seed [32]byte
	for i := 0; i < 4; i++ {
		binary.LittleEndian.PutUint64(seed[8*i:], rng.Uint64())
	}
	s, err := keystore.NewMemorySigner(ed25519.NewKeyFromSeed(seed[:]))
	if err != nil {
		t.Fatal(err)
	}
	return s, identity.NewID(s.Public())
}

type simStats struct {
	tasks, accepted, noQuorum, wrongAccepted, sybilAccepted int
	maliciousTasks, maliciousWrong, sybilTasks              int
	feedback                                                int
	feedbackWeight                                          float64
	levelChanges                                            []reputation.Change
}

// TestReputationSimulation: 10 honest peers, 3 that return a wrong result a third of the time, and (after
// phase 1) 20 fresh Sybil identities that collude on one wrong result and sign bad feedback about everyone
// else. Asserts: within boundEstablish tasks the honest peers are Trusted (or Super) and the malicious
// ones Restricted (or Blocked); within boundSybils tasks of joining every Sybil is Restricted or Blocked;
// no wrong result is ever accepted; and a vote in which all 20 Sybils face 3 trusted peers goes to the
// trusted peers.
func TestReputationSimulation(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], simSeed)
	rng := rand.New(rand.NewChaCha8(seed))
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }

	// NoSync: the simulation measures the model, not the disk (some 1,600 commits; with an fsync each the
	// run takes 2.6 s on an idle disk and 20 s on a busy one). Durability is tested in agent/reputation.
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var st simStats
	// The simulation models how feedback is weighed, not how its task is confirmed: every reference is
	// taken as confirmed (the agent checks the subject's signed result: docs/adr/0051), and the per-giver
	// rate is lifted.
	rep, err := reputation.NewStore(ctx, db, reputation.Config{FeedbackPerHour: 1 << 30}, reputation.Options{
		Now:       clock,
		OnChange:  func(c reputation.Change) { st.levelChanges = append(st.levelChanges, c) },
		CheckTask: func(context.Context, *reputation.Feedback) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := NewEvidenceStore(db)
	if err != nil {
		t.Fatal(err)
	}
	voter := &Voter{Rep: rep, Evidence: ev, Now: clock}

	var peers []*simPeer
	add := func(kind simKind, n int) {
		for i := 0; i < n; i++ {
			s, id := simAgent(t, rng)
			peers = append(peers, &simPeer{kind: kind, signer: s, id: id})
		}
	}
	add(honest, simHonest)
	add(malicious, simMalicious)
	byID := map[string]*simPeer{}
	for _, p := range peers {
		byID[p.id.String()] = p
	}

	correct := func(task int) [32]byte { return DigestOf([]byte(fmt.Sprintf("result of task %d", task))) }
	sybilDigest := func(task int) [32]byte { return DigestOf([]byte(fmt.Sprintf("colluding forgery for task %d", task))) }

	runTask := func(task int, selected []identity.ID) Outcome {
		t.Helper()
		var results []Result
		for _, id := range selected {
			p := byID[id.String()]
			r := Result{Peer: id, Digest: correct(task), ResponseTime: time.Duration(300+rng.IntN(1200)) * time.Millisecond}
			switch p.kind {
			case malicious:
				st.maliciousTasks++
				if rng.IntN(3) == 0 {
					st.maliciousWrong++
					r.Digest = DigestOf([]byte(fmt.Sprintf("garbage %d from %s", task, id)))
				}
			case sybil:
				st.sybilTasks++
				r.Digest = sybilDigest(task)
				r.ResponseTime = 150 * time.Millisecond
			}
			body := []byte(fmt.Sprintf("signed result envelope: task %d digest %x", task, r.Digest))
			sig, err := p.signer.Sign(ctx, body)
			if err != nil {
				t.Fatal(err)
			}
			r.Signed, r.Signature = body, sig
			results = append(results, r)
		}
		out, err := voter.Decide(ctx, fmt.Sprintf("task-%d", task), selected, results)
		if err != nil {
			t.Fatal(err)
		}
		st.tasks++
		if out.Accepted {
			st.accepted++
			if out.Digest != correct(task) {
				st.wrongAccepted++
			}
			if out.Digest == sybilDigest(task) {
				st.sybilAccepted++
			}
		} else {
			st.noQuorum++
		}
		// Every responder contributed about a CPU-second.
		var obs []reputation.Observation
		for _, r := range results {
			obs = append(obs, reputation.Observation{Peer: r.Peer, Kind: reputation.Contributed, Units: 1})
		}
		if err := rep.Record(ctx, obs...); err != nil {
			t.Fatal(err)
		}
		// Each Sybil in the task signs the worst feedback about every other participant and the best about
		// another Sybil.
		for _, id := range selected {
			p := byID[id.String()]
			if p.kind != sybil {
				continue
			}
			for _, other := range selected {
				if other.Equal(id) {
					continue
				}
				rating := reputation.MinRating
				if byID[other.String()].kind == sybil {
					rating = reputation.MaxRating
				}
				fb, err := reputation.SignFeedback(ctx, p.signer, p.id, other, fmt.Sprintf("task-%d", task), rating, []byte("ref"), now)
				if err != nil {
					t.Fatal(err)
				}
				w, err := rep.AddFeedback(ctx, fb)
				if err != nil {
					t.Fatal(err)
				}
				st.feedback++
				st.feedbackWeight += w
			}
		}
		now = now.Add(time.Minute)
		return out
	}
	ids := func(kinds ...simKind) []identity.ID {
		var out []identity.ID
		for _, p := range peers {
			for _, k := range kinds {
				if p.kind == k {
					out = append(out, p.id)
				}
			}
		}
		return out
	}
	established := func(l reputation.Level) bool { return l == reputation.Trusted || l == reputation.Super }
	restricted := func(l reputation.Level) bool { return l == reputation.Restricted || l == reputation.Blocked }
	mark := func(task int) {
		for _, p := range peers {
			l := rep.Level(p.id)
			ok := (p.kind == honest && established(l)) || (p.kind != honest && restricted(l))
			if ok && p.reached == 0 {
				p.reached = task
			} else if !ok {
				p.reached = 0
			}
		}
	}

	// Phase 1: the network of 13 peers establishes itself.
	task := 0
	for ; task < simPhase1; task++ {
		sel, err := Select(rep, ids(honest, malicious), simK, rng, SelectOptions{})
		if err != nil {
			t.Fatalf("task %d: %v", task, err)
		}
		runTask(task, sel)
		mark(task + 1)
	}
	for _, p := range peers {
		l := rep.Level(p.id)
		switch {
		case p.kind == honest && !established(l):
			t.Errorf("after %d tasks honest peer %s is %s (score %.3f), want trusted or super", task, short(p.id), l, rep.Report(p.id).Score)
		case p.kind == malicious && !restricted(l):
			t.Errorf("after %d tasks malicious peer %s is %s (score %.3f), want restricted or blocked", task, short(p.id), l, rep.Report(p.id).Score)
		}
		if p.reached == 0 || p.reached > boundEstablish {
			t.Errorf("peer %s (kind %d) reached its class at task %d, the bound is %d", short(p.id), p.kind, p.reached, boundEstablish)
		}
	}
	phase1 := levelSummary(rep, peers)

	// The Sybils join: 20 fresh identities.
	add(sybil, simSybils)
	for _, p := range peers[simHonest+simMalicious:] {
		byID[p.id.String()] = p
	}
	joined := task

	// The attack vote: all 20 Sybils (New, no history) against 3 trusted honest peers on one task.
	var trusted3 []identity.ID
	for _, p := range peers {
		if p.kind == honest && len(trusted3) < 3 {
			trusted3 = append(trusted3, p.id)
		}
	}
	var sybilWeight, trustedWeight float64
	for _, id := range ids(sybil) {
		sybilWeight += rep.Weight(id)
	}
	for _, id := range trusted3 {
		trustedWeight += rep.Weight(id)
	}
	attack := runTask(task, append(append([]identity.ID{}, trusted3...), ids(sybil)...))
	task++
	if !attack.Accepted || attack.Digest != correct(task-1) || len(attack.Dissenting) != simSybils {
		t.Fatalf("attack vote: accepted=%v correct=%v dissenting=%d (share %.3f, reason %q)", attack.Accepted, attack.Digest == correct(task-1), len(attack.Dissenting), attack.Share, attack.Reason)
	}
	attackShare := attack.Share
	if sybilWeight >= trustedWeight/2 {
		t.Errorf("20 fresh Sybils weigh %.3f against 3 trusted peers' %.3f: they must weigh less than half", sybilWeight, trustedWeight)
	}
	mark(task)

	// Phase 2: ordinary tasks with the Sybils in the candidate pool.
	sybilDone := 0
	for ; task < joined+1+simPhase2; task++ {
		sel, err := Select(rep, ids(honest, malicious, sybil), simK, rng, SelectOptions{})
		if err != nil {
			t.Fatalf("task %d: %v", task, err)
		}
		runTask(task, sel)
		mark(task + 1)
		if sybilDone == 0 {
			all := true
			for _, id := range ids(sybil) {
				all = all && restricted(rep.Level(id))
			}
			if all {
				sybilDone = task + 1 - joined
			}
		}
	}
	for _, p := range peers {
		l := rep.Level(p.id)
		switch {
		case p.kind == honest && !established(l):
			t.Errorf("at the end honest peer %s is %s (score %.3f)", short(p.id), l, rep.Report(p.id).Score)
		case p.kind != honest && !restricted(l):
			t.Errorf("at the end %s peer %s is %s (score %.3f)", []string{"honest", "malicious", "sybil"}[p.kind], short(p.id), l, rep.Report(p.id).Score)
		}
	}
	if sybilDone == 0 || sybilDone > boundSybils {
		t.Errorf("every Sybil was Restricted or Blocked %d tasks after joining; the bound is %d", sybilDone, boundSybils)
	}
	if st.wrongAccepted != 0 || st.sybilAccepted != 0 {
		t.Errorf("%d wrong results accepted (%d of them the Sybils')", st.wrongAccepted, st.sybilAccepted)
	}
	if n := ev.Count(); n == 0 {
		t.Error("no evidence of dissent was stored")
	}
	for _, id := range ids(sybil) {
		es, err := ev.ByPeer(id)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if pub := id.PublicKey(); pub.Verify(e.Signed, e.Signature) != nil {
				t.Fatalf("evidence against %s does not verify under its key", short(id))
			}
		}
	}
	elapsed := time.Since(start)

	// The numbers for docs/reputation-simulation.md.
	t.Logf("seed %d, %d tasks (phase 1: %d, attack vote: 1, phase 2: %d), k=%d, %s", simSeed, st.tasks, simPhase1, simPhase2, simK, elapsed.Round(time.Millisecond))
	t.Logf("accepted %d, no quorum %d, wrong accepted %d, sybil accepted %d", st.accepted, st.noQuorum, st.wrongAccepted, st.sybilAccepted)
	t.Logf("malicious peers ran %d tasks and returned %d wrong results; sybils ran %d tasks (20 of them in the attack vote)", st.maliciousTasks, st.maliciousWrong, st.sybilTasks)
	t.Logf("after phase 1: %s", phase1)
	t.Logf("attack vote: 20 sybils weigh %.3f, 3 trusted weigh %.3f; accepted the correct result with %.1f%% of the weight", sybilWeight, trustedWeight, 100*attackShare)
	t.Logf("every sybil restricted or blocked %d tasks after joining; %d sybil feedbacks carried total weight %.3f", sybilDone, st.feedback, st.feedbackWeight)
	t.Logf("at the end: %s", levelSummary(rep, peers))
	t.Logf("evidence records: %d; level changes: %d", ev.Count(), len(st.levelChanges))
	for _, kind := range []simKind{honest, malicious} {
		var reached []int
		for _, p := range peers {
			if p.kind == kind {
				reached = append(reached, p.reached)
			}
		}
		sort.Ints(reached)
		t.Logf("%s peers reached their class at tasks %v", []string{"honest", "malicious"}[kind], reached)
	}
	for _, p := range peers[:simHonest+simMalicious] {
		r := rep.Report(p.id)
		t.Logf("  %-9s %s %-10s score %.3f quality %.3f integrity %.3f evidence %.1f", []string{"honest", "malicious", "sybil"}[p.kind], short(p.id), r.Level, r.Score, r.Quality, r.Integrity, r.Evidence)
	}
	if elapsed > 30*time.Second {
		t.Errorf("simulation took %s; it must stay a few seconds", elapsed)
	}
}

func levelSummary(rep *reputation.Store, peers []*simPeer) string {
	names := []string{"honest", "malicious", "sybil"}
	var parts []string
	for k := honest; k <= sybil; k++ {
		count := map[reputation.Level]int{}
		n := 0
		for _, p := range peers {
			if p.kind == k {
				count[rep.Level(p.id)]++
				n++
			}
		}
		if n == 0 {
			continue
		}
		var ls []string
		for _, l := range reputation.AllLevels {
			if count[l] > 0 {
				ls = append(ls, fmt.Sprintf("%d %s", count[l], l))
			}
		}
		parts = append(parts, names[k]+": "+strings.Join(ls, ", "))
	}
	return strings.Join(parts, "; ")
}

func short(id identity.ID) string {
	s := id.String()
	h := sha256.Sum256([]byte(s))
	return fmt.Sprintf("%s…%x", s[:12], h[:2])
}
