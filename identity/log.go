package identity

import (
	"bufio"
	"bytes"
	"fmt"

	"github.com/custos-agent/custos/keystore"
)

// State is what a verified log says about an identity now.
type State struct {
	ID             ID
	Generation     uint64
	Current        keystore.PublicKey // key of the current generation
	NextDigest     string             // committed digest of the next key
	RecoveryDigest string             // committed digest of the recovery key ("" when none)
	Head           [32]byte           // digest of the last event
	Time           int64              // time of the last event (Unix seconds)
	// Generations is the history of the identity's keys, one entry per generation from inception, in
	// order: what VerifySignedAt judges signatures by. Shared between states: never change it in place.
	Generations []GenerationSpan
}

// Log is an identity's key event log, in order from inception.
type Log struct{ Events []Event }

// Verify checks the whole log from inception and returns the resulting state. The error names the first
// event that fails and why, and wraps ErrBadChain (or ErrMalformed / ErrUnknownVersion).
func (l *Log) Verify() (State, error) {
	if len(l.Events) == 0 {
		return State{}, fmt.Errorf("%w: the log is empty", ErrBadChain)
	}
	if len(l.Events) > MaxLogEvents {
		return State{}, fmt.Errorf("%w: %d events exceeds the limit of %d", ErrBadChain, len(l.Events), MaxLogEvents)
	}
	st, err := verifyInception(&l.Events[0])
	if err != nil {
		return State{}, err
	}
	for i := 1; i < len(l.Events); i++ {
		if st, err = st.Apply(&l.Events[i]); err != nil {
			return State{}, err
		}
	}
	return st, nil
}

func bad(e *Event, format string, args ...any) error {
	return fmt.Errorf("%w: generation %d (%s): %s", ErrBadChain, e.Generation, e.Type, fmt.Sprintf(format, args...))
}

func verifyInception(e *Event) (State, error) {
	if e.Version != EventVersion {
		return State{}, fmt.Errorf("%w: %d", ErrUnknownVersion, e.Version)
	}
	if e.Type != Inception || e.Generation != 0 || e.Prev != "" || e.RecoveryBy != nil {
		return State{}, bad(e, "the first event must be an inception at generation 0 with no prior event")
	}
	pub, err := e.PublicKey()
	if err != nil {
		return State{}, bad(e, "key: %v", err)
	}
	id := NewID(pub)
	if e.ID != id.String() {
		return State{}, bad(e, "the ID %q is not the inception key", e.ID)
	}
	if err := checkDigestField(e.Next, true); err != nil {
		return State{}, bad(e, "next: %v", err)
	}
	if err := checkDigestField(e.Recovery, false); err != nil {
		return State{}, bad(e, "recovery: %v", err)
	}
	if err := verifySig(e, ByNew, pub); err != nil {
		return State{}, err
	}
	if len(e.Signatures) != 1 {
		return State{}, bad(e, "an inception carries exactly one signature, has %d", len(e.Signatures))
	}
	head := e.Digest()
	return State{ID: id, Current: pub, NextDigest: e.Next, RecoveryDigest: e.Recovery, Head: head, Time: e.Time,
		Generations: []GenerationSpan{{Generation: 0, Key: pub, Head: head, From: e.Time}}}, nil
}

// Apply verifies e as the successor of st and returns the new state. st is not changed.
func (st State) Apply(e *Event) (State, error) {
	if e.Version != EventVersion {
		return State{}, fmt.Errorf("%w: %d", ErrUnknownVersion, e.Version)
	}
	if e.ID != st.ID.String() {
		return State{}, bad(e, "event for %q in the log of %q", e.ID, st.ID)
	}
	if e.Generation != st.Generation+1 {
		return State{}, bad(e, "expected generation %d", st.Generation+1)
	}
	if e.Prev != digestString(st.Head) {
		return State{}, bad(e, "prev does not name the digest of generation %d", st.Generation)
	}
	if e.Time < st.Time {
		return State{}, bad(e, "time %d is before the previous event's %d", e.Time, st.Time)
	}
	if err := checkDigestField(e.Next, true); err != nil {
		return State{}, bad(e, "next: %v", err)
	}
	pub, err := e.PublicKey()
	if err != nil {
		return State{}, bad(e, "key: %v", err)
	}
	next := State{ID: st.ID, Generation: e.Generation, Current: pub, NextDigest: e.Next, Head: e.Digest(), Time: e.Time}
	switch e.Type {
	case Rotation:
		if e.RecoveryBy != nil {
			return State{}, bad(e, "a rotation carries no recovery key")
		}
		if e.Recovery != st.RecoveryDigest {
			return State{}, bad(e, "a rotation may not change the committed recovery key")
		}
		if !equalDigest(st.NextDigest, pub) {
			return State{}, bad(e, "the new key is not the one pre-committed at generation %d", st.Generation)
		}
		if err := verifySig(e, ByPrior, st.Current); err != nil {
			return State{}, err
		}
		if err := verifySig(e, ByNew, pub); err != nil {
			return State{}, err
		}
		next.RecoveryDigest = e.Recovery
	case Recovery:
		if st.RecoveryDigest == "" {
			return State{}, bad(e, "%v", ErrNoRecovery)
		}
		if e.RecoveryBy == nil {
			return State{}, bad(e, "a recovery must carry the recovery key")
		}
		rk, err := DecodeKey(e.RecoveryBy.Algorithm, e.RecoveryBy.Key)
		if err != nil {
			return State{}, bad(e, "recovery key: %v", err)
		}
		if !equalDigest(st.RecoveryDigest, rk) {
			return State{}, bad(e, "the recovery key is not the one committed")
		}
		if err := checkDigestField(e.Recovery, true); err != nil {
			return State{}, bad(e, "recovery: %v", err)
		}
		if err := verifySig(e, ByRecovery, rk); err != nil {
			return State{}, err
		}
		if err := verifySig(e, ByNew, pub); err != nil {
			return State{}, err
		}
		next.RecoveryDigest = e.Recovery
	default:
		return State{}, bad(e, "unknown event type %q", e.Type)
	}
	if len(e.Signatures) != 2 {
		return State{}, bad(e, "a %s carries exactly two signatures, has %d", e.Type, len(e.Signatures))
	}
	next.Generations = st.successorSpans(e, pub, next.Head)
	return next, nil
}

func verifySig(e *Event, by string, pub keystore.PublicKey) error {
	sig, err := e.sig(by)
	if err != nil {
		return bad(e, "%v", err)
	}
	if err := pub.Verify(e.SigningInput().Message(), sig); err != nil {
		return bad(e, "the %s signature does not verify", by)
	}
	return nil
}

func checkDigestField(s string, required bool) error {
	if s == "" {
		if required {
			return fmt.Errorf("missing")
		}
		return nil
	}
	b, err := b64.DecodeString(s)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("not a base64url SHA-256 digest")
	}
	return nil
}

// Encode writes the log as JSON lines, one event per line.
func (l *Log) Encode() []byte {
	var buf bytes.Buffer
	for i := range l.Events {
		buf.Write(l.Events[i].Encode())
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

// DecodeLog strictly decodes a JSON-lines log. It checks form only; call Verify.
func DecodeLog(b []byte) (Log, error) {
	var l Log
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, MaxEventSize), MaxEventSize)
	line := 0
	for sc.Scan() {
		line++
		if len(l.Events) >= MaxLogEvents {
			return Log{}, fmt.Errorf("%w: more than %d events", ErrMalformed, MaxLogEvents)
		}
		e, err := DecodeEvent(sc.Bytes())
		if err != nil {
			return Log{}, fmt.Errorf("line %d: %w", line, err)
		}
		l.Events = append(l.Events, e)
	}
	if err := sc.Err(); err != nil {
		return Log{}, fmt.Errorf("%w: line %d: %v", ErrMalformed, line+1, err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		return Log{}, fmt.Errorf("%w: the last line is not terminated (torn write?)", ErrMalformed)
	}
	return l, nil
}

// CompareForks checks two verified logs of the same identity for duplicity: two different events at one
// generation. It returns nil when one log is a prefix of the other (the longer is simply newer), and an
// error wrapping ErrDuplicity naming the generation where they differ otherwise.
func CompareForks(a, b *Log) error {
	n := min(len(a.Events), len(b.Events))
	for i := 0; i < n; i++ {
		if a.Events[i].Digest() != b.Events[i].Digest() {
			return fmt.Errorf("%w: two different events for generation %d", ErrDuplicity, a.Events[i].Generation)
		}
	}
	return nil
}
