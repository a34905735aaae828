// Package consensus decides which result of a replicated task to accept (DESIGN 6, seed "Consensus
// Mechanisms"): it chooses k peers for a task by reputation, then accepts a result by weighted vote over
// result digests — weights from reputation, from an administrator-signed stake table, or both (hybrid).
// Agreeing peers gain reputation, dissenting peers lose it, and the dissenting signed results are kept as
// evidence. Proof of work (the seed's fourth type) prices admission at the handshake: agent/puzzle.
package consensus

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/identity"
)

// Mode is where vote weights come from.
type Mode string

// The weighting modes.
const (
	// ByReputation: weight = score × the level's vote multiplier (reputation.Store.Weight).
	ByReputation Mode = "reputation"
	// ByStake: weight = the agent's amount in the verified stake table.
	ByStake Mode = "stake"
	// Hybrid: weight = reputation weight × stake; a vote counts only with both.
	Hybrid Mode = "hybrid"
)

// ParseMode checks a mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ByReputation, ByStake, Hybrid:
		return m, nil
	}
	return "", fmt.Errorf("unknown consensus mode %q: use reputation, stake or hybrid", s)
}

// Reputation is what consensus needs from agent/reputation (*reputation.Store implements it).
type Reputation interface {
	Report(peer identity.ID) reputation.Report
	Weight(peer identity.ID) float64
	Record(ctx context.Context, obs ...reputation.Observation) error
}

// ErrNotEnoughPeers is returned by Select when fewer than k peers can be chosen.
var ErrNotEnoughPeers = errors.New("not enough selectable peers")

// SelectOptions tune Select.
type SelectOptions struct {
	// ExploreSlots is how many of the k places go to New peers (so that newcomers can earn a reputation,
	// without letting a crowd of fresh identities fill a task). Default 1; negative means none.
	ExploreSlots int
}

// Select chooses up to k peers from candidates to run one task. Peers whose level is not Selectable
// (Restricted, Blocked) are never chosen. Of the k places, ExploreSlots go to New peers picked uniformly;
// the others go to established peers (Trusted, Super), sampled without replacement with probability
// proportional to their vote weight. When there are too few established peers, New peers fill the rest.
// rng must be unpredictable to peers in production (rand.New(rand.NewChaCha8(seed from crypto/rand)));
// tests pass a fixed seed. Fewer than k choosable peers gives the ones there are and ErrNotEnoughPeers.
func Select(rep Reputation, candidates []identity.ID, k int, rng *rand.Rand, opts SelectOptions) ([]identity.ID, error) {
	if k < 1 {
		return nil, fmt.Errorf("select %d peers: k must be at least 1", k)
	}
	explore := opts.ExploreSlots
	if explore == 0 {
		explore = 1
	}
	if explore < 0 {
		explore = 0
	}
	type cand struct {
		id identity.ID
		w  float64
	}
	var established, fresh []cand
	seen := map[string]bool{}
	for _, id := range candidates {
		if seen[id.String()] {
			continue
		}
		seen[id.String()] = true
		r := rep.Report(id)
		if !r.Effects.Selectable {
			continue
		}
		switch r.Level {
		case reputation.Trusted, reputation.Super:
			established = append(established, cand{id, rep.Weight(id)})
		default:
			fresh = append(fresh, cand{id, 1})
		}
	}
	nFresh := min(explore, len(fresh), k)
	nEst := min(k-nFresh, len(established))
	nFresh = min(k-nEst, len(fresh)) // too few established: New peers fill the rest

	// Weighted sampling without replacement (Efraimidis–Spirakis): key = u^(1/w), take the largest keys.
	type keyed struct {
		c   cand
		key float64
	}
	ks := make([]keyed, len(established))
	for i, c := range established {
		w := math.Max(c.w, 1e-9)
		ks[i] = keyed{c, math.Pow(rng.Float64(), 1/w)}
	}
	slices.SortStableFunc(ks, func(a, b keyed) int { return cmp.Compare(b.key, a.key) })
	out := make([]identity.ID, 0, k)
	for _, x := range ks[:nEst] {
		out = append(out, x.c.id)
	}
	rng.Shuffle(len(fresh), func(i, j int) { fresh[i], fresh[j] = fresh[j], fresh[i] })
	for _, c := range fresh[:nFresh] {
		out = append(out, c.id)
	}
	if len(out) < k {
		return out, fmt.Errorf("%w: wanted %d, %d can be chosen (%d established, %d new)", ErrNotEnoughPeers, k, len(out), len(established), len(fresh))
	}
	return out, nil
}

// Result is one peer's answer to a task, as the message layer received and verified it.
type Result struct {
	Peer identity.ID
	// Digest is SHA-256 of the result payload: what the vote compares. DigestOf computes it.
	Digest [32]byte
	// Signed is the signed message that carried the result (kept as evidence when it dissents).
	Signed []byte
	// Signature is the peer's signature bytes over Signed (kept as evidence).
	Signature []byte
	// ResponseTime is how long the peer took.
	ResponseTime time.Duration
}

// DigestOf is the digest a vote compares: SHA-256 over a context string and the result payload.
func DigestOf(payload []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte("custos/v1/result-digest\x00"))
	h.Write(payload)
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// Tally is the weight behind one digest.
type Tally struct {
	Digest [32]byte
	Weight float64
	Peers  []identity.ID
}

// Outcome is the decision on one task.
type Outcome struct {
	Task     string
	Mode     Mode
	Accepted bool
	Digest   [32]byte // the accepted digest (zero when not accepted)
	// Weight is the weight behind the leading digest; Total is the weight of every selected peer,
	// including those that did not answer; Share = Weight / Total.
	Weight, Total, Share float64
	Tallies              []Tally // heaviest first
	Agreeing             []identity.ID
	Dissenting           []identity.ID
	Silent               []identity.ID
	Equivocating         []identity.ID // sent two different results: their votes are void
	Weights              map[string]float64
	Reason               string // why it was not accepted
}

// Voter decides tasks. Set its fields before the first Decide; SetStakes may be called at any time.
type Voter struct {
	// Rep supplies reputation weights and receives the observations of each decision.
	Rep Reputation
	// Mode of weighting; "" means ByReputation.
	Mode Mode
	// Quorum is the share of the total weight of the selected peers that one digest needs; default 2/3.
	// It must be above 1/2, so that two digests can never both win.
	Quorum float64
	// MinAgree is the least number of distinct peers that must agree; default 2 (1 when k is 1).
	MinAgree int
	// Evidence stores dissenting and equivocating results; nil keeps none.
	Evidence *EvidenceStore
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu     sync.RWMutex
	stakes *StakeTable
}

// SetStakes installs a stake table that the caller has verified (VerifyStakeTable).
func (v *Voter) SetStakes(t *StakeTable) {
	v.mu.Lock()
	v.stakes = t
	v.mu.Unlock()
}

// ErrNoQuorum is what Outcome.Err wraps when no result was accepted.
var ErrNoQuorum = errors.New("no quorum")

// Err is nil for an accepted outcome, else an error wrapping ErrNoQuorum with the reason.
func (o Outcome) Err() error {
	if o.Accepted {
		return nil
	}
	return fmt.Errorf("task %s: %w: %s", o.Task, ErrNoQuorum, o.Reason)
}

func (v *Voter) weight(mode Mode, st *StakeTable, peer identity.ID) float64 {
	switch mode {
	case ByStake:
		return float64(st.Amount(peer))
	case Hybrid:
		return v.Rep.Weight(peer) * float64(st.Amount(peer))
	default:
		return v.Rep.Weight(peer)
	}
}

// Decide tallies the results of one task that ran on selected, accepts the digest whose weight reaches the
// quorum (see docs/adr/0013), records what it learned in reputation (Completed with response time for every
// responder, Failed for silent peers, Agreed/Dissented when a result was accepted, ProtocolError for
// equivocation), and stores dissenting and equivocating signed results as evidence. Results from peers that
// were not selected are ignored. An Outcome with Accepted false means no quorum: the caller may re-run the
// task on more peers.
func (v *Voter) Decide(ctx context.Context, task string, selected []identity.ID, results []Result) (Outcome, error) {
	if err := ctx.Err(); err != nil {
		return Outcome{}, err
	}
	if len(selected) == 0 {
		return Outcome{}, errors.New("decide: no peers were selected")
	}
	mode := v.Mode
	if mode == "" {
		mode = ByReputation
	}
	if _, err := ParseMode(string(mode)); err != nil {
		return Outcome{}, err
	}
	q := v.Quorum
	if q == 0 {
		q = 2.0 / 3.0
	}
	if q <= 0.5 || q > 1 {
		return Outcome{}, fmt.Errorf("quorum %g must be in (0.5, 1]", q)
	}
	minAgree := v.MinAgree
	if minAgree == 0 {
		minAgree = 2
	}
	minAgree = min(minAgree, len(selected))
	v.mu.RLock()
	st := v.stakes
	v.mu.RUnlock()
	if (mode == ByStake || mode == Hybrid) && st == nil {
		return Outcome{}, fmt.Errorf("decide in %s mode: no stake table is installed", mode)
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}

	out := Outcome{Task: task, Mode: mode, Weights: map[string]float64{}}
	sel := map[string]identity.ID{}
	for _, id := range selected {
		if _, dup := sel[id.String()]; dup {
			continue
		}
		sel[id.String()] = id
		w := v.weight(mode, st, id)
		out.Weights[id.String()] = w
		out.Total += w
	}
	// First result per peer; a second, different one voids the peer's vote.
	first := map[string]Result{}
	var evidence []Evidence
	equivocated := map[string]bool{}
	for _, r := range results {
		k := r.Peer.String()
		if _, ok := sel[k]; !ok {
			continue
		}
		if f, ok := first[k]; ok {
			if f.Digest != r.Digest && !equivocated[k] {
				equivocated[k] = true
				out.Equivocating = append(out.Equivocating, r.Peer)
				evidence = append(evidence, newEvidence(task, f, [32]byte{}, mode, out.Weights[k], "equivocation: first result", now()),
					newEvidence(task, r, [32]byte{}, mode, out.Weights[k], "equivocation: second result", now()))
			}
			continue
		}
		first[k] = r
	}
	byDigest := map[[32]byte]*Tally{}
	for k, r := range first {
		if equivocated[k] {
			continue
		}
		t := byDigest[r.Digest]
		if t == nil {
			t = &Tally{Digest: r.Digest}
			byDigest[r.Digest] = t
		}
		t.Weight += out.Weights[k]
		t.Peers = append(t.Peers, r.Peer)
	}
	for _, t := range byDigest {
		slices.SortFunc(t.Peers, func(a, b identity.ID) int { return cmp.Compare(a.String(), b.String()) })
		out.Tallies = append(out.Tallies, *t)
	}
	slices.SortFunc(out.Tallies, func(a, b Tally) int {
		if c := cmp.Compare(b.Weight, a.Weight); c != 0 {
			return c
		}
		return cmp.Compare(string(a.Digest[:]), string(b.Digest[:]))
	})
	for _, id := range selected {
		if _, ok := first[id.String()]; !ok && !slices.ContainsFunc(out.Silent, id.Equal) {
			out.Silent = append(out.Silent, id)
		}
	}

	if len(out.Tallies) > 0 {
		lead := out.Tallies[0]
		out.Weight = lead.Weight
		if out.Total > 0 {
			out.Share = lead.Weight / out.Total
		}
		switch {
		case out.Total <= 0 || lead.Weight <= 0:
			out.Reason = "the responding peers carry no weight"
		case out.Share < q:
			out.Reason = fmt.Sprintf("the leading result has %.1f%% of the weight, the quorum is %.1f%%", 100*out.Share, 100*q)
		case len(lead.Peers) < minAgree:
			out.Reason = fmt.Sprintf("only %d peer(s) agree, at least %d must", len(lead.Peers), minAgree)
		default:
			out.Accepted = true
			out.Digest = lead.Digest
		}
	} else {
		out.Reason = "no peer answered"
	}

	var obs []reputation.Observation
	for k, r := range first {
		obs = append(obs, reputation.Observation{Peer: r.Peer, Kind: reputation.Completed, ResponseTime: r.ResponseTime})
		switch {
		case equivocated[k]:
			obs = append(obs, reputation.Observation{Peer: r.Peer, Kind: reputation.ProtocolError})
		case !out.Accepted:
		case r.Digest == out.Digest:
			out.Agreeing = append(out.Agreeing, r.Peer)
			obs = append(obs, reputation.Observation{Peer: r.Peer, Kind: reputation.Agreed})
		default:
			out.Dissenting = append(out.Dissenting, r.Peer)
			obs = append(obs, reputation.Observation{Peer: r.Peer, Kind: reputation.Dissented})
			evidence = append(evidence, newEvidence(task, r, out.Digest, mode, out.Weights[k], "dissent", now()))
		}
	}
	for _, id := range out.Silent {
		obs = append(obs, reputation.Observation{Peer: id, Kind: reputation.Failed})
	}
	sortIDs(out.Agreeing)
	sortIDs(out.Dissenting)
	sortIDs(out.Equivocating)
	if v.Evidence != nil && len(evidence) > 0 {
		if err := v.Evidence.Put(ctx, evidence...); err != nil {
			return out, err
		}
	}
	if err := v.Rep.Record(ctx, obs...); err != nil {
		return out, fmt.Errorf("record consensus outcome: %w", err)
	}
	return out, nil
}

func sortIDs(ids []identity.ID) {
	slices.SortFunc(ids, func(a, b identity.ID) int { return cmp.Compare(a.String(), b.String()) })
}
