// Package reputation keeps a score and a trust level for every peer (DESIGN 6, seed "Trust Mechanisms"):
// task completion rate, response time, resource contribution, error rate and signed peer feedback
// (weighted by the giver's own reputation), all decaying exponentially over time; trust levels
// New → Trusted → Super and New → Restricted → Blocked with hysteresis; persisted in bbolt. Each level
// implies concrete effects (Effects): a rate-limit multiplier, a puzzle difficulty, a vote-weight
// multiplier, and refusal at the handshake for Blocked peers.
package reputation

import "fmt"

// Level is a peer's trust level.
type Level string

// The trust levels of the seed's diagram.
const (
	New        Level = "new"
	Trusted    Level = "trusted"
	Super      Level = "super"
	Restricted Level = "restricted"
	Blocked    Level = "blocked"
)

// AllLevels lists the levels from best to worst.
var AllLevels = []Level{Super, Trusted, New, Restricted, Blocked}

// ParseLevel checks a level name.
func ParseLevel(s string) (Level, error) {
	for _, l := range AllLevels {
		if string(l) == s {
			return l, nil
		}
	}
	return "", fmt.Errorf("unknown trust level %q: use super, trusted, new, restricted or blocked", s)
}

// Effects is what a level implies for the rest of the agent.
type Effects struct {
	// RateMultiplier scales the peer's rate limits and quotas (agent/policy Request.Multiplier).
	RateMultiplier float64
	// PuzzleBits is the base proof-of-work difficulty asked at the handshake (agent/puzzle adds bits under
	// load).
	PuzzleBits uint8
	// VoteMultiplier scales the peer's score into its vote weight in reputation-weighted consensus.
	VoteMultiplier float64
	// Selectable says whether consensus may choose the peer to run a task.
	Selectable bool
	// RefuseHandshake says the handshake validator refuses the peer outright.
	RefuseHandshake bool
}

// DefaultEffects are the effects of each level (docs/adr/0012).
func DefaultEffects() map[Level]Effects {
	return map[Level]Effects{
		Super:      {RateMultiplier: 2, PuzzleBits: 0, VoteMultiplier: 1.5, Selectable: true},
		Trusted:    {RateMultiplier: 1, PuzzleBits: 0, VoteMultiplier: 1, Selectable: true},
		New:        {RateMultiplier: 0.5, PuzzleBits: 16, VoteMultiplier: 0.1, Selectable: true},
		Restricted: {RateMultiplier: 0.1, PuzzleBits: 20, VoteMultiplier: 0, Selectable: false},
		Blocked:    {RateMultiplier: 0, PuzzleBits: 0, VoteMultiplier: 0, Selectable: false, RefuseHandshake: true},
	}
}

// Thresholds are the score bounds of the level transitions. Entering a level needs a score beyond the bound
// that leaving it needs (hysteresis), so a peer near a bound does not flap.
type Thresholds struct {
	TrustedEnter    float64 // New → Trusted at or above
	TrustedLeave    float64 // Trusted → New below
	SuperEnter      float64 // Trusted → Super at or above
	SuperLeave      float64 // Super → Trusted below
	RestrictedEnter float64 // New or Trusted → Restricted at or below
	RestrictedLeave float64 // Restricted → New above
	BlockedEnter    float64 // Restricted → Blocked at or below
}

// MinEvidence is how much (decayed) evidence a transition needs, so that one early event cannot decide.
type MinEvidence struct {
	Trusted    float64
	Super      float64
	Restricted float64
	Blocked    float64
}

// DefaultThresholds are the defaults (docs/adr/0012).
func DefaultThresholds() Thresholds {
	return Thresholds{
		TrustedEnter: 0.75, TrustedLeave: 0.65,
		SuperEnter: 0.92, SuperLeave: 0.85,
		RestrictedEnter: 0.35, RestrictedLeave: 0.45,
		BlockedEnter: 0.15,
	}
}

// DefaultMinEvidence are the defaults: a task gives about two observations (completion and agreement).
func DefaultMinEvidence() MinEvidence {
	return MinEvidence{Trusted: 10, Super: 60, Restricted: 8, Blocked: 12}
}

func (t Thresholds) validate() error {
	ok := 0 <= t.BlockedEnter && t.BlockedEnter < t.RestrictedEnter &&
		t.RestrictedEnter < t.RestrictedLeave && t.RestrictedLeave <= t.TrustedLeave &&
		t.TrustedLeave < t.TrustedEnter && t.TrustedEnter <= t.SuperLeave &&
		t.SuperLeave < t.SuperEnter && t.SuperEnter <= 1
	if !ok {
		return fmt.Errorf("trust thresholds must satisfy 0 <= blocked_enter < restricted_enter < restricted_leave <= trusted_leave < trusted_enter <= super_leave < super_enter <= 1, got %+v", t)
	}
	return nil
}

// next is the level a peer at level l moves to with score s and evidence n. Blocked is left only by an
// operator (Unblock).
func (t Thresholds) next(l Level, s, n float64, m MinEvidence) Level {
	switch l {
	case Blocked:
		return Blocked
	case Restricted:
		if s <= t.BlockedEnter && n >= m.Blocked {
			return Blocked
		}
		if s > t.RestrictedLeave {
			return New
		}
		return Restricted
	case Super:
		if s < t.SuperLeave {
			return t.next(Trusted, s, n, m)
		}
		return Super
	case Trusted:
		if s <= t.RestrictedEnter && n >= m.Restricted {
			return Restricted
		}
		if s < t.TrustedLeave {
			return New
		}
		if s >= t.SuperEnter && n >= m.Super {
			return Super
		}
		return Trusted
	default: // New
		if s <= t.RestrictedEnter && n >= m.Restricted {
			return Restricted
		}
		if s >= t.TrustedEnter && n >= m.Trusted {
			return Trusted
		}
		return New
	}
}
