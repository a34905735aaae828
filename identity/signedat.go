package identity

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/custos-agent/custos/keystore"
)

// SigningSkew is how far an object's issued-at time may lie outside the window of the generation that
// signed it (seconds): the signer's clock truncates to the second and an object may be signed in the same
// second as the key event that ends its generation. docs/protocol.md, "Signing-generation validity".
const SigningSkew = 60

// GenerationSpan is one generation of an identity's key as its key event log shows it: the key, the
// digest of the event that made it current, when it became current, and when and how it ended.
type GenerationSpan struct {
	Generation uint64
	Key        keystore.PublicKey
	Head       [32]byte  // digest of the event that made this generation current
	From       int64     // time of that event (Unix seconds)
	Until      int64     // time of the event that ended it; meaningful only when EndedBy != ""
	EndedBy    EventType // "" while current; Rotation or Recovery
}

// Lost reports whether the generation was replaced by a recovery (its key was lost or stolen).
func (g *GenerationSpan) Lost() bool { return g.EndedBy == Recovery }

// HeadString is the base64url form of Head, as signed objects carry it.
func (g *GenerationSpan) HeadString() string { return digestString(g.Head) }

// successorSpans returns st's history with its last generation ended by e and e's generation appended.
// It never changes st's slice (states share it).
func (st State) successorSpans(e *Event, pub keystore.PublicKey, head [32]byte) []GenerationSpan {
	out := make([]GenerationSpan, len(st.Generations), len(st.Generations)+1)
	copy(out, st.Generations)
	if n := len(out); n > 0 {
		out[n-1].Until, out[n-1].EndedBy = e.Time, e.Type
	}
	return append(out, GenerationSpan{Generation: e.Generation, Key: pub, Head: head, From: e.Time})
}

// Errors of VerifySignedAt; each refusal wraps one of them.
var (
	// ErrGenerationUnknown: the object names a generation (or head) this agent's copy of the signer's log
	// does not have; a newer log of the signer is needed.
	ErrGenerationUnknown = errors.New("signing generation not in the known key event log")
	// ErrOutsideGeneration: the object's issued-at time is outside the window in which the generation
	// that signed it was current.
	ErrOutsideGeneration = errors.New("issued outside the signing generation's window")
	// ErrLostGeneration: the generation that signed the object was replaced by a recovery; everything it
	// signed is void.
	ErrLostGeneration = errors.New("signed by a generation that a recovery replaced")
	// ErrSignature: no admissible generation's key verifies the signature.
	ErrSignature = errors.New("signature does not verify")
)

// NoGeneration is VerifySignedAt's gen argument for objects that do not name the generation that
// signed them: every generation whose window contains the issued-at time is tried.
const NoGeneration = -1

// SignedAtOnly is the State of an identity whose key event log this agent has never seen: only its
// inception key (which its ID names) is known, as generation 0, with an unknown start and no known end.
// Objects naming a later generation are refused (ErrGenerationUnknown).
func SignedAtOnly(id ID) State {
	pub := id.PublicKey()
	return State{ID: id, Current: pub, Generations: []GenerationSpan{{Generation: 0, Key: pub, From: 0}}}
}

// VerifySignedAt is the one rule by which an object signed by this identity at time issued (Unix seconds,
// as the object states it) is judged against the identity's key event log (docs/protocol.md,
// "Signing-generation validity"): the object is valid when verify accepts the key of a generation n such
// that
//   - n is the generation the object names (gen >= 0, and head, when not "", is the digest of the event
//     that made n current), or, for an object that names none (gen == NoGeneration), any generation
//     whose window contains issued;
//   - issued lies in [From(n) - SigningSkew, Until(n) + SigningSkew) when n has ended, or is at least
//     From(n) - SigningSkew when n is current: a rotation ends a generation but keeps what it signed
//     while it was current;
//   - n was not replaced by a recovery: a recovery voids everything the lost generation signed, whatever
//     date it carries (the date is the signer's claim, and a thief can pick any date inside the window).
//
// verify is called with candidate keys and must return nil when the signature verifies under the key.
// VerifySignedAt returns the generation that verified.
func (st *State) VerifySignedAt(gen int64, head string, issued int64, verify func(keystore.PublicKey) error) (uint64, error) {
	spans := st.Generations
	if len(spans) == 0 { // a State made by hand: only its current key is known
		spans = []GenerationSpan{{Generation: st.Generation, Key: st.Current, Head: st.Head, From: 0}}
	}
	var cands, lost []GenerationSpan
	if gen >= 0 {
		i := slices.IndexFunc(spans, func(g GenerationSpan) bool { return g.Generation == uint64(gen) })
		if i < 0 {
			return 0, fmt.Errorf("%w: the object names generation %d of %s, and the key event log known here ends at generation %d: this agent needs the signer's newer log (a session with it, or its log installed)",
				ErrGenerationUnknown, gen, st.ID, spans[len(spans)-1].Generation)
		}
		g := spans[i]
		if head != "" && g.Head != ([32]byte{}) && head != g.HeadString() {
			return 0, fmt.Errorf("%w: the object names generation %d of %s with event digest %s, and the log known here has %s there (a forked log?)",
				ErrGenerationUnknown, gen, st.ID, head, g.HeadString())
		}
		if err := admissible(&g, issued); err != nil {
			return 0, err
		}
		cands = append(cands, g)
	} else {
		var firstErr error
		for i := range spans {
			if err := admissible(&spans[i], issued); err != nil {
				if errors.Is(err, ErrLostGeneration) && inWindow(&spans[i], issued) {
					lost = append(lost, spans[i])
				}
				if firstErr == nil || !errors.Is(err, ErrOutsideGeneration) {
					firstErr = err
				}
				continue
			}
			cands = append(cands, spans[i])
		}
		if len(cands) == 0 {
			return 0, firstErr
		}
	}
	var last error
	for _, g := range cands {
		if last = verify(g.Key); last == nil {
			return g.Generation, nil
		}
	}
	for _, g := range lost { // say why, when the signature is the lost generation's
		if verify(g.Key) == nil {
			return 0, admissible(&g, issued)
		}
	}
	return 0, fmt.Errorf("%w under the key of generation %d of %s: %w", ErrSignature, cands[len(cands)-1].Generation, st.ID, last)
}

// inWindow reports whether issued lies in g's window (skew included), whatever ended it.
func inWindow(g *GenerationSpan, issued int64) bool {
	h := *g
	h.EndedBy = Rotation
	if g.EndedBy == "" {
		h.EndedBy = ""
	}
	return admissible(&h, issued) == nil
}

// admissible applies the window and recovery rules to one generation.
func admissible(g *GenerationSpan, issued int64) error {
	if g.Lost() {
		return fmt.Errorf("%w: generation %d was replaced by a recovery at %d; what it signed is void (ask the signer to sign it again with its current key)",
			ErrLostGeneration, g.Generation, g.Until)
	}
	if g.From > 0 && issued < g.From-SigningSkew {
		return fmt.Errorf("%w: issued at %d, before generation %d became current at %d", ErrOutsideGeneration, issued, g.Generation, g.From)
	}
	if g.EndedBy != "" && g.Until <= math.MaxInt64-SigningSkew && issued >= g.Until+SigningSkew {
		return fmt.Errorf("%w: issued at %d, after generation %d was rotated away at %d", ErrOutsideGeneration, issued, g.Generation, g.Until)
	}
	return nil
}
