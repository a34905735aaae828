// Package delegation lets an agent's identity key (in a TPM or a token, slow and precious) sign rarely:
// it signs a short-lived delegation for an in-memory Ed25519 operational key, which signs handshakes and
// envelopes, and an HPKE encryption key (X25519, or X25519+ML-KEM-768) for store-and-forward envelopes
// (DESIGN 3.4). A verifier checks operational key -> delegation -> key event log -> agent ID.
//
// In strict mode the operational key is the identity key itself: every handshake and envelope is signed by
// the hardware key (for low-rate agents); the delegation then only certifies the encryption key.
package delegation

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/wire"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/signature"
)

// Version is the only delegation format version.
const Version = 1

// Limits of the delegation format and policy.
const (
	// MaxSize bounds an encoded delegation.
	MaxSize = 4096
	// MaxLifetime is the longest validity a verifier accepts (not-after minus not-before).
	MaxLifetime = 24 * time.Hour
	// DefaultLifetime is how long the Manager's delegations are valid.
	DefaultLifetime = time.Hour
	maxIDLen        = 128
	maxSigLen       = 128 // Ed25519: 64; ECDSA P-256 DER: at most 72
)

// Mode says which key signs the agent's handshakes and envelopes.
type Mode string

const (
	// Delegated: an in-memory Ed25519 operational key, certified by the identity key.
	Delegated Mode = "delegated"
	// Strict: the identity key itself (the operational key field repeats the identity key).
	Strict Mode = "strict"
)

// Delegation is a signed statement by an identity key: "until NotAfter, OpKey speaks for AgentID, and
// EncKey receives its sealed messages". Its binary encoding (Encode) is what travels and is cached; the
// signature covers the same fields under the context "custos/v1/delegation" (docs/protocol.md).
type Delegation struct {
	Version    uint64
	AgentID    string
	Generation uint64 // generation of the identity key that signed
	Mode       Mode
	OpAlg      keystore.Algorithm
	OpKey      []byte // raw public key (keystore.PublicKey.Bytes)
	KEM        suite.KEM
	EncKey     []byte // serialised HPKE public key of KEM
	NotBefore  int64  // Unix seconds, inclusive
	NotAfter   int64  // Unix seconds, exclusive
	Signature  []byte // by the identity key of Generation (Ed25519 raw or ECDSA DER)
}

func (d *Delegation) body(w *wire.Writer) *wire.Writer {
	return w.Uint64(d.Version).String(d.AgentID).Uint64(d.Generation).String(string(d.Mode)).
		String(string(d.OpAlg)).Bytes(d.OpKey).Uint64(uint64(d.KEM)).Bytes(d.EncKey).
		Int64(d.NotBefore).Int64(d.NotAfter)
}

// SigningInput is the exact byte string the identity key signs.
func (d *Delegation) SigningInput() []byte {
	return d.body(wire.NewWriter(256).Raw(signature.Delegation.Prefix()...)).Out()
}

// Encode is the binary form: the signed fields, then the signature, each length-prefixed.
func (d *Delegation) Encode() []byte { return d.body(wire.NewWriter(256)).Bytes(d.Signature).Out() }

// Decode strictly decodes Encode's form. It checks form (sizes, known version, mode, algorithms and KEM),
// not the signature: call Verify.
func Decode(b []byte) (*Delegation, error) {
	if len(b) > MaxSize {
		return nil, reason.New(reason.Malformed, "delegation of %d bytes exceeds %d", len(b), MaxSize)
	}
	r := wire.NewReader("delegation", b)
	d := &Delegation{Version: r.Uint64("version")}
	if r.Err() == nil && d.Version != Version {
		return nil, reason.New(reason.UnknownVersion, "delegation version %d (this agent speaks %d)", d.Version, Version)
	}
	d.AgentID = r.String("agent_id", maxIDLen)
	d.Generation = r.Uint64("generation")
	d.Mode = Mode(r.String("mode", 16))
	d.OpAlg = keystore.Algorithm(r.String("op_alg", 16))
	d.OpKey = clone(r.Bytes("op_key", 64))
	kem := r.Uint64("kem")
	d.KEM = suite.KEM(kem)
	d.EncKey = clone(r.Bytes("enc_key", 2048))
	d.NotBefore = r.Int64("not_before")
	d.NotAfter = r.Int64("not_after")
	d.Signature = clone(r.Bytes("signature", maxSigLen))
	if err := r.End(); err != nil {
		return nil, err
	}
	if kem > math.MaxUint16 {
		// KEM identifiers are 16 bits (RFC 9180): a wider value would decode to the same delegation as its
		// low 16 bits, so two encodings would carry one signature.
		return nil, reason.New(reason.Malformed, "delegation: kem %d does not fit in 16 bits", kem)
	}
	if err := d.checkForm(); err != nil {
		return nil, err
	}
	return d, nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// checkForm checks what can be checked without keys or time.
func (d *Delegation) checkForm() error {
	bad := func(format string, args ...any) error {
		return reason.New(reason.Malformed, "delegation: "+format, args...)
	}
	if _, err := identity.ParseID(d.AgentID); err != nil {
		return bad("agent_id: %v", err)
	}
	if d.Mode != Delegated && d.Mode != Strict {
		return bad("mode %q: want %q or %q", d.Mode, Delegated, Strict)
	}
	if !d.OpAlg.Valid() {
		return bad("op_alg %q: want ed25519 or p256", d.OpAlg)
	}
	if d.Mode == Delegated && d.OpAlg != keystore.Ed25519 {
		return bad("a delegated operational key must be ed25519, not %s", d.OpAlg)
	}
	if _, err := keystore.ParsePublicKey(d.OpAlg, d.OpKey); err != nil {
		return bad("op_key: %v", err)
	}
	if !d.KEM.Valid() {
		return bad("kem 0x%04x: want 0x0020 (x25519) or 0x647a (mlkem768x25519)", uint64(d.KEM))
	}
	if err := suite.CheckPublicKey(d.KEM, d.EncKey); err != nil {
		return bad("enc_key: %v", err)
	}
	if d.NotAfter <= d.NotBefore {
		return bad("not_after %d is not after not_before %d", d.NotAfter, d.NotBefore)
	}
	if len(d.Signature) == 0 {
		return bad("signature is empty")
	}
	return nil
}

// Verified is what a verified delegation establishes.
type Verified struct {
	AgentID    identity.ID
	Generation uint64
	Mode       Mode
	OpKey      keystore.PublicKey // Ed25519 (Delegated) or the identity key (Strict)
	KEM        suite.KEM
	EncKey     []byte
	NotBefore  time.Time
	NotAfter   time.Time
	Delegation *Delegation
}

// Verify checks d for the agent id whose verified key event log state is st, at time now: d names id and
// st's generation, is signed by st.Current (the CURRENT key: a delegation signed by a rotated-away key is
// refused), is well-formed for its mode, lasts at most MaxLifetime, and now is in [NotBefore, NotAfter).
// Failures carry reason codes: delegation_wrong_key, delegation_invalid, delegation_expired,
// delegation_not_yet_valid, malformed.
func Verify(id identity.ID, st identity.State, d *Delegation, now time.Time) (*Verified, error) {
	if d == nil {
		return nil, reason.New(reason.Malformed, "no delegation")
	}
	if d.Version != Version {
		return nil, reason.New(reason.UnknownVersion, "delegation version %d (this agent speaks %d)", d.Version, Version)
	}
	if err := d.checkForm(); err != nil {
		return nil, err
	}
	if !st.ID.Equal(id) {
		return nil, reason.New(reason.Internal, "the key event log state given is for %s, not %s", st.ID, id)
	}
	if d.AgentID != id.String() {
		return nil, reason.New(reason.DelegationInvalid, "the delegation is for %s, not %s", d.AgentID, id)
	}
	if d.Generation != st.Generation {
		return nil, reason.New(reason.DelegationWrongKey,
			"the delegation was signed by the key of generation %d; the identity's current key is generation %d: ask the peer for a fresh delegation", d.Generation, st.Generation)
	}
	if err := st.Current.Verify(d.SigningInput(), d.Signature); err != nil {
		return nil, reason.Wrap(reason.DelegationWrongKey, err, "the delegation is not signed by the current identity key (generation %d) or was altered", st.Generation)
	}
	op, err := keystore.ParsePublicKey(d.OpAlg, d.OpKey)
	if err != nil {
		return nil, reason.Wrap(reason.Malformed, err, "delegation op_key")
	}
	if d.Mode == Strict && !op.Equal(st.Current) {
		return nil, reason.New(reason.DelegationInvalid, "a strict-mode delegation must name the identity key itself as the operational key")
	}
	if d.Mode == Delegated && op.Equal(st.Current) {
		return nil, reason.New(reason.DelegationInvalid, "a delegated-mode operational key must not be the identity key (use strict mode)")
	}
	// Compared in seconds: a lifetime read from the wire, multiplied into a time.Duration, could wrap.
	// NotAfter > NotBefore (checkForm), so the unsigned difference is the exact lifetime even when the
	// signed one would overflow.
	if life := uint64(d.NotAfter) - uint64(d.NotBefore); life > uint64(MaxLifetime/time.Second) {
		return nil, reason.New(reason.DelegationInvalid, "the delegation is valid for %d s, longer than the %s a verifier accepts", life, MaxLifetime)
	}
	nb, na := time.Unix(d.NotBefore, 0), time.Unix(d.NotAfter, 0)
	if err := CheckValidAt(nb, na, now); err != nil {
		return nil, err
	}
	return &Verified{AgentID: id, Generation: d.Generation, Mode: d.Mode, OpKey: op, KEM: d.KEM,
		EncKey: clone(d.EncKey), NotBefore: nb, NotAfter: na, Delegation: d}, nil
}

// CheckValidAt is Verify's check of time: a delegation valid from nb (inclusive) to na (exclusive) is
// valid at now. For a caller that kept what Verify returned (Verified.NotBefore, NotAfter) and checks the
// same delegation at another time.
func CheckValidAt(nb, na, now time.Time) error {
	if now.Before(nb) {
		return reason.New(reason.DelegationNotYetValid, "the delegation is valid from %s, it is now %s (check both clocks)",
			nb.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if !now.Before(na) {
		return reason.New(reason.DelegationExpired, "the delegation expired at %s, it is now %s",
			na.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// VerifyOperationalKey is Verify for callers that only need the operational key, such as transport
// bindings (custos/v1/transport-binding): given an agent ID, its verified key event log state and a
// delegation, it returns the verified operational public key (Ed25519 in delegated mode; the identity key,
// Ed25519 or P-256, in strict mode).
func VerifyOperationalKey(id identity.ID, st identity.State, d *Delegation, now time.Time) (keystore.PublicKey, error) {
	v, err := Verify(id, st, d, now)
	if err != nil {
		return keystore.PublicKey{}, err
	}
	return v.OpKey, nil
}

// Issue has identitySigner (the key of st.Current) sign a delegation of opKey and the encryption key
// encPub (of KEM kem) for [notBefore, notAfter).
func Issue(ctx context.Context, identitySigner keystore.Signer, st identity.State, mode Mode, opKey keystore.PublicKey,
	kem suite.KEM, encPub []byte, notBefore, notAfter time.Time) (*Delegation, error) {
	if !identitySigner.Public().Equal(st.Current) {
		return nil, fmt.Errorf("issue delegation: the signer is not the current identity key (generation %d)", st.Generation)
	}
	d := &Delegation{
		Version: Version, AgentID: st.ID.String(), Generation: st.Generation, Mode: mode,
		OpAlg: opKey.Algorithm, OpKey: opKey.Bytes(), KEM: kem, EncKey: clone(encPub),
		NotBefore: notBefore.Unix(), NotAfter: notAfter.Unix(), Signature: []byte{0},
	}
	if err := d.checkForm(); err != nil {
		return nil, fmt.Errorf("issue delegation: %w", err)
	}
	sig, err := identitySigner.Sign(ctx, d.SigningInput())
	if err != nil {
		return nil, fmt.Errorf("issue delegation: the identity key did not sign: %w", err)
	}
	d.Signature = sig
	return d, nil
}
