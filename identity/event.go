package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/signature"
)

// EventType is what a key event does.
type EventType string

const (
	// Inception creates the identity (generation 0). Signed by the inception key.
	Inception EventType = "inception"
	// Rotation moves to the pre-committed next key. Signed by the prior key and the new key.
	Rotation EventType = "rotation"
	// Recovery replaces a lost key with one authorised by the recovery key committed at inception (or
	// by the last recovery). Signed by the recovery key and the new key.
	Recovery EventType = "recovery"
)

// EventVersion is the only version of the key event format.
const EventVersion = 1

// MaxEventSize bounds one encoded event; MaxLogEvents bounds a log a peer may send.
const (
	MaxEventSize = 4096
	MaxLogEvents = 4096
)

// Signer roles inside an event.
const (
	ByNew      = "new"
	ByPrior    = "prior"
	ByRecovery = "recovery"
)

// Event is one entry of a key event log. Its JSON form is what is stored and exchanged; what is signed is
// the length-prefixed encoding of SigningInput (docs/protocol.md, "Key event log").
type Event struct {
	Version    int                `json:"v"`
	Type       EventType          `json:"type"`
	ID         string             `json:"id"`
	Generation uint64             `json:"gen"`
	Prev       string             `json:"prev"`         // base64url SHA-256 digest of the previous event; "" at inception
	Algorithm  keystore.Algorithm `json:"alg"`          // algorithm of Key
	Key        string             `json:"key"`          // base64url raw public key of this generation
	Next       string             `json:"next"`         // base64url digest (PublicKey.Digest) of the pre-committed next key
	Recovery   string             `json:"recovery"`     // base64url digest of the recovery key; "" when none
	RecoveryBy *EventKey          `json:"recovery_key"` // the recovery key itself, on Recovery events only
	Time       int64              `json:"time"`         // Unix seconds
	Signatures []EventSignature   `json:"sigs"`
}

// EventKey is a public key with its algorithm, as carried inside an event.
type EventKey struct {
	Algorithm keystore.Algorithm `json:"alg"`
	Key       string             `json:"key"`
}

// EventSignature is one signature over an event's signing input.
type EventSignature struct {
	By  string `json:"by"`  // "new", "prior" or "recovery"
	Sig string `json:"sig"` // base64url signature (Ed25519 raw, ECDSA DER)
}

// SigningInput is the exact input every signature of the event covers.
func (e *Event) SigningInput() *signature.Input {
	in := signature.NewInput(signature.KeyEvent).
		Uint64(uint64(e.Version)).
		String(string(e.Type)).
		String(e.ID).
		Uint64(e.Generation).
		String(e.Prev).
		String(string(e.Algorithm)).
		String(e.Key).
		String(e.Next).
		String(e.Recovery).
		Int64(e.Time)
	if e.RecoveryBy != nil {
		in.String(string(e.RecoveryBy.Algorithm)).String(e.RecoveryBy.Key)
	} else {
		in.String("").String("")
	}
	return in
}

// Digest is SHA-256 over the signing input: what the next event's Prev names. Two events with the same
// digest say the same thing (their signatures may differ: ECDSA is randomised).
func (e *Event) Digest() [32]byte { return sha256.Sum256(e.SigningInput().Message()) }

// PublicKey decodes the event's key.
func (e *Event) PublicKey() (keystore.PublicKey, error) { return DecodeKey(e.Algorithm, e.Key) }

func (e *Event) sig(by string) ([]byte, error) {
	var found []byte
	n := 0
	for _, s := range e.Signatures {
		if s.By == by {
			n++
			b, err := b64.DecodeString(s.Sig)
			if err != nil {
				return nil, fmt.Errorf("%s signature is not unpadded base64url", by)
			}
			found = b
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("event needs exactly one %q signature, has %d", by, n)
	}
	return found, nil
}

func (e *Event) addSig(ctx context.Context, by string, s keystore.Signer) error {
	sig, err := signature.SignInput(ctx, s, e.SigningInput())
	if err != nil {
		return fmt.Errorf("sign %s event (%s key): %w", e.Type, by, err)
	}
	e.Signatures = append(e.Signatures, EventSignature{By: by, Sig: b64.EncodeToString(sig)})
	return nil
}

// Encode returns the compact JSON encoding of the event (one line, no trailing newline).
func (e *Event) Encode() []byte {
	b, err := json.Marshal(e)
	if err != nil {
		panic("identity: marshal event: " + err.Error()) // only plain fields: cannot fail
	}
	return b
}

// DecodeEvent strictly decodes one event: size limit, no unknown fields, no trailing data, version 1.
// It checks form, not signatures (Verify does that).
func DecodeEvent(b []byte) (Event, error) {
	var e Event
	if len(b) > MaxEventSize {
		return e, fmt.Errorf("%w: event of %d bytes exceeds %d", ErrMalformed, len(b), MaxEventSize)
	}
	if err := strictjson.Decode(b, &e, 0); err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if e.Version != EventVersion {
		return Event{}, fmt.Errorf("%w: event version %d (this agent speaks %d)", ErrUnknownVersion, e.Version, EventVersion)
	}
	// One spelling per event: the input must be exactly what Encode writes (compact, every field, in
	// order), so decode-then-encode gives back the input bytes.
	if strictjson.Canonical(b, e.Encode()) != nil {
		return Event{}, fmt.Errorf("%w: event is not in canonical form (compact JSON with every field, in the order Encode writes them)", ErrMalformed)
	}
	return e, nil
}

// Errors of the key event log. Each verification error wraps one of these.
var (
	ErrMalformed      = errors.New("malformed key event")
	ErrUnknownVersion = errors.New("unknown key event version")
	ErrBadChain       = errors.New("key event log does not verify")
	ErrDuplicity      = errors.New("key event log fork (duplicity): the identity is compromised")
	ErrNoRecovery     = errors.New("no recovery key was committed for this identity")
)

func digestString(d [32]byte) string { return b64.EncodeToString(d[:]) }

// equalDigest compares a committed digest (text) with a key's digest in constant time.
func equalDigest(committed string, k keystore.PublicKey) bool {
	d := k.Digest()
	return subtle.ConstantTimeCompare([]byte(committed), []byte(digestString(d))) == 1
}

// Incept makes the inception event of a new identity: current signs it; next is the pre-committed next
// key; recovery (optional, may be zero) is the recovery key whose digest is committed.
func Incept(ctx context.Context, current keystore.Signer, next, recovery keystore.PublicKey, now time.Time) (Event, error) {
	if next.IsZero() {
		return Event{}, errors.New("inception needs a pre-committed next key")
	}
	pub := current.Public()
	e := Event{
		Version:    EventVersion,
		Type:       Inception,
		ID:         NewID(pub).String(),
		Algorithm:  pub.Algorithm,
		Key:        EncodeKey(pub),
		Next:       digestString(next.Digest()),
		Time:       now.Unix(),
		Signatures: []EventSignature{},
	}
	if !recovery.IsZero() {
		e.Recovery = digestString(recovery.Digest())
	}
	return e, e.addSig(ctx, ByNew, current)
}

// Rotate makes the rotation event from state st to the pre-committed key held by newSigner, committing
// next. prior signs with the key of generation st.Generation.
func Rotate(ctx context.Context, st State, prior, newSigner keystore.Signer, next keystore.PublicKey, now time.Time) (Event, error) {
	if !prior.Public().Equal(st.Current) {
		return Event{}, fmt.Errorf("the prior signer is not the current key of generation %d", st.Generation)
	}
	if !equalDigest(st.NextDigest, newSigner.Public()) {
		return Event{}, fmt.Errorf("the new key is not the one pre-committed at generation %d", st.Generation)
	}
	if next.IsZero() {
		return Event{}, errors.New("rotation needs a new pre-committed next key")
	}
	e := st.successor(Rotation, newSigner.Public(), next, now)
	e.Recovery = st.RecoveryDigest
	if err := e.addSig(ctx, ByPrior, prior); err != nil {
		return Event{}, err
	}
	return e, e.addSig(ctx, ByNew, newSigner)
}

// Recover makes a recovery event: the committed recovery key authorises newSigner's key in place of a
// lost one. newRecovery becomes the committed recovery key from now on (it may be the same key).
func Recover(ctx context.Context, st State, recovery, newSigner keystore.Signer, next, newRecovery keystore.PublicKey, now time.Time) (Event, error) {
	if st.RecoveryDigest == "" {
		return Event{}, ErrNoRecovery
	}
	rp := recovery.Public()
	if !equalDigest(st.RecoveryDigest, rp) {
		return Event{}, errors.New("this recovery key is not the one committed for the identity")
	}
	if next.IsZero() || newRecovery.IsZero() {
		return Event{}, errors.New("recovery needs a next key and a recovery key to commit")
	}
	e := st.successor(Recovery, newSigner.Public(), next, now)
	e.Recovery = digestString(newRecovery.Digest())
	e.RecoveryBy = &EventKey{Algorithm: rp.Algorithm, Key: EncodeKey(rp)}
	if err := e.addSig(ctx, ByRecovery, recovery); err != nil {
		return Event{}, err
	}
	return e, e.addSig(ctx, ByNew, newSigner)
}

func (st State) successor(t EventType, key, next keystore.PublicKey, now time.Time) Event {
	return Event{
		Version:    EventVersion,
		Type:       t,
		ID:         st.ID.String(),
		Generation: st.Generation + 1,
		Prev:       digestString(st.Head),
		Algorithm:  key.Algorithm,
		Key:        EncodeKey(key),
		Next:       digestString(next.Digest()),
		Time:       now.Unix(),
		Signatures: []EventSignature{},
	}
}
