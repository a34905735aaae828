package reputation

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/custos-agent/custos/identity"
)

// Factor is one input of a score, as `agentctl peers` shows it.
type Factor struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`    // 0..1, higher is better
	Evidence float64 `json:"evidence"` // decayed number of observations behind it
	Weight   float64 `json:"weight"`   // its weight in the quality average (0 when left out for lack of evidence)
	Detail   string  `json:"detail"`   // what it measures
}

// Report is a peer's reputation now: the level, the score and the factors behind it.
type Report struct {
	Peer      string    `json:"peer"`
	Level     Level     `json:"level"`
	Score     float64   `json:"score"`     // quality × integrity, 0..1; 0.5 for a peer never seen
	Quality   float64   `json:"quality"`   // weighted mean of completion, response time, contribution, feedback
	Integrity float64   `json:"integrity"` // the error-rate factor
	Evidence  float64   `json:"evidence"`
	Since     time.Time `json:"since"` // when the level was entered
	FirstSeen time.Time `json:"first_seen"`
	Manual    bool      `json:"manual,omitempty"`
	// BlockedBy and Until: a network block (ADR 0101), by an administrator, ending then.
	BlockedBy string     `json:"blocked_by,omitempty"`
	Until     *time.Time `json:"until,omitempty"`
	Factors   []Factor   `json:"factors"`
	Effects   Effects    `json:"effects"`
}

// Names of the factors.
const (
	FactorCompletion   = "task_completion_rate"
	FactorResponseTime = "response_time"
	FactorContribution = "resource_contribution"
	FactorErrorRate    = "error_rate"
	FactorFeedback     = "peer_feedback"
)

// factors computes every factor of r (already decayed), the quality average and the integrity.
//
//   - completion  = (completed + 1) / (completed + failed + 2)        (Beta mean, uniform prior)
//   - response    = min(1, target / mean response time)
//   - contribution= 0.5 + 0.5·(1 − e^(−contrib/scale))               (can only raise the score)
//   - feedback    = (pos + 1) / (pos + neg + 2)
//   - integrity   = (good + 2) / (good + 2 + penalty·bad)            (1 − error rate, with an innocent prior)
//
// score = quality × integrity, where quality is the weighted mean of the first four. Response time and
// feedback enter with their weight scaled by confidence(evidence) = e/(e+ConfidenceEvidence): nothing until
// observed, then gradually, so that a burst of lightly weighted feedback cannot swing the score.
func (s *Store) factors(r *record) (quality, integrity float64, fs []Factor) {
	w := s.cfg.Weights
	completion := (r.Completed + 1) / (r.Completed + r.Failed + 2)
	fs = append(fs, Factor{Name: FactorCompletion, Value: completion, Evidence: r.Completed + r.Failed, Weight: w.Completion,
		Detail: "tasks delivered / tasks accepted"})
	rt := Factor{Name: FactorResponseTime, Value: 0.5, Evidence: r.RTCount, Detail: "target / mean response time (" + s.cfg.TargetResponse.String() + " scores 1)"}
	if r.RTCount > 1e-9 {
		mean := r.RTSum / r.RTCount
		rt.Value = 1
		if mean > s.cfg.TargetResponse.Seconds() {
			rt.Value = s.cfg.TargetResponse.Seconds() / mean
		}
		rt.Weight = w.ResponseTime * confidence(r.RTCount)
	}
	fs = append(fs, rt)
	fs = append(fs, Factor{Name: FactorContribution, Value: 0.5 + 0.5*(1-math.Exp(-r.Contrib/s.cfg.ContributionScale)), Evidence: r.Contrib,
		Weight: w.Contribution, Detail: "resources contributed (0.5 with none)"})
	fb := Factor{Name: FactorFeedback, Value: (r.FbPos + 1) / (r.FbPos + r.FbNeg + 2), Evidence: r.FbPos + r.FbNeg,
		Detail: "signed peer feedback, weighted by each giver's reputation"}
	if r.FbPos+r.FbNeg > 1e-9 {
		fb.Weight = w.Feedback * confidence(r.FbPos+r.FbNeg)
	}
	fs = append(fs, fb)
	var sum, wsum float64
	for _, f := range fs {
		sum += f.Value * f.Weight
		wsum += f.Weight
	}
	quality = 0.5
	if wsum > 0 {
		quality = sum / wsum
	}
	integrity = (r.Good + 2) / (r.Good + 2 + s.cfg.ErrorPenalty*r.Bad)
	fs = append(fs, Factor{Name: FactorErrorRate, Value: integrity, Evidence: r.Good + r.Bad,
		Detail: "1 - error rate: wrong results and protocol errors count " + trimFloat(s.cfg.ErrorPenalty) + "x; multiplies the quality"})
	return quality, integrity, fs
}

func (s *Store) score(r *record) float64 {
	q, i, _ := s.factors(r)
	return q * i
}

// Report returns a peer's reputation now (decayed to the current time; nothing is written).
func (s *Store) Report(peer identity.ID) Report {
	now := s.now().UnixNano()
	s.mu.Lock()
	r := s.get(peer.String(), now)
	s.mu.Unlock()
	return s.report1(r)
}

func (s *Store) report1(r *record) Report {
	q, i, fs := s.factors(r)
	rep := Report{
		Peer: r.Peer, Level: r.Level, Score: q * i, Quality: q, Integrity: i, Evidence: r.evidence(),
		Since: time.Unix(0, r.Since), FirstSeen: time.Unix(0, r.FirstSeen), Manual: r.Manual,
		Factors: fs, Effects: s.cfg.Effects[r.Level], BlockedBy: r.BlockedBy,
	}
	if r.Until > 0 {
		u := time.Unix(r.Until, 0).UTC()
		rep.Until = &u
	}
	return rep
}

// List returns every known peer's report, best score first (for `agentctl peers`).
func (s *Store) List() []Report {
	now := s.now().UnixNano()
	s.mu.Lock()
	out := make([]Report, 0, len(s.peers))
	for k := range s.peers {
		out = append(out, s.report1(s.get(k, now)))
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Report) int {
		if c := cmp.Compare(b.Score, a.Score); c != 0 {
			return c
		}
		return cmp.Compare(a.Peer, b.Peer)
	})
	return out
}

// CountByLevel returns how many known peers are at each level (for the peers-by-trust-level gauge).
func (s *Store) CountByLevel() map[Level]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[Level]int{}
	for _, l := range AllLevels {
		out[l] = 0
	}
	for _, r := range s.peers {
		out[r.Level]++
	}
	return out
}

func trimFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// ConfidenceEvidence is the evidence at which response time and feedback count with half their weight.
const ConfidenceEvidence = 5.0

func confidence(e float64) float64 { return e / (e + ConfidenceEvidence) }
