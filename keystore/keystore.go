// Package keystore defines the one interface every key custody backend implements: a small core
// (generate, signer, public key, destroy, list) plus optional capabilities found by type assertion.
//
// Keys are addressed by URI: RFC 7512 "pkcs11:" URIs for tokens, "tpm:" URIs for TPM-wrapped blobs, and
// "file:" URIs for the software backend. A key URI never carries a secret: PINs and passphrases come from
// a pin-source (a file or a named environment variable), see ReadSecret.
package keystore

import (
	"context"
	"errors"
)

// Algorithm names a signature algorithm. It travels with every key, signature and agent ID; a verifier
// takes it from the registered key, never from the signature.
type Algorithm string

const (
	// Ed25519 is pure Ed25519 (RFC 8032); signatures are 64 raw bytes.
	Ed25519 Algorithm = "ed25519"
	// P256 is ECDSA over NIST P-256 with SHA-256; signatures are ASN.1 DER (SEQUENCE{r, s}).
	P256 Algorithm = "p256"
)

// Valid reports whether a is an algorithm this project knows.
func (a Algorithm) Valid() bool { return a == Ed25519 || a == P256 }

// ParseAlgorithm parses "ed25519" or "p256".
func ParseAlgorithm(s string) (Algorithm, error) {
	a := Algorithm(s)
	if !a.Valid() {
		return "", errorf(ErrUnsupportedAlgorithm, "unknown algorithm %q: use ed25519 or p256", s)
	}
	return a, nil
}

// Keystore is the core interface of a key custody backend. Implementations are safe for concurrent use.
type Keystore interface {
	// Generate makes a new key inside the backend and returns its reference.
	// A label already in use gives ErrExists; an algorithm the backend cannot do gives ErrUnsupportedAlgorithm.
	Generate(ctx context.Context, req GenerateRequest) (Key, error)
	// Signer returns a signer for the key at keyURI. A key that does not exist gives ErrNotFound.
	Signer(ctx context.Context, keyURI string) (Signer, error)
	// PublicKey returns the public half of the key at keyURI.
	PublicKey(ctx context.Context, keyURI string) (PublicKey, error)
	// Destroy deletes the key for good (DestroyObject on a token; blob deleted on a TPM).
	Destroy(ctx context.Context, keyURI string) error
	// List returns every key this keystore holds that it can describe.
	List(ctx context.Context) ([]Key, error)
	// Info describes the backend.
	Info() Info
	// Close releases sessions, devices and handles. Signers obtained before Close stop working.
	Close() error
}

// GenerateRequest asks for a new key. It is a struct so that options can grow.
type GenerateRequest struct {
	// Algorithm of the new key.
	Algorithm Algorithm
	// Label names the key inside the keystore (CKA_LABEL, blob file name). Unique per keystore.
	Label string
}

// Key describes one key held by a keystore.
type Key struct {
	// URI addresses the key. It carries no secret and can be stored and printed.
	URI string
	// Label is the key's name inside the keystore.
	Label string
	// Public is the key's public half (with its algorithm).
	Public PublicKey
}

// Info describes a keystore backend.
type Info struct {
	// Backend is "pkcs11", "tpm" or "software".
	Backend string
	// HardwareBacked is true when private keys never exist outside a device.
	HardwareBacked bool
	// URI addresses the keystore itself (no key, no secrets).
	URI string
	// Algorithms lists what Generate accepts, in order of preference.
	Algorithms []Algorithm
}

// Signer signs with one key. Sign takes the whole message (not a digest): the backend hashes where the
// algorithm needs it (SHA-256 for P-256). Ed25519 signatures are 64 raw bytes; ECDSA signatures are DER.
type Signer interface {
	Public() PublicKey
	Sign(ctx context.Context, message []byte) ([]byte, error)
}

// Pinger is an optional capability: a cheap round trip to the device, for health checks.
type Pinger interface {
	Ping(ctx context.Context) error
}

// DataKeyWrapper is an optional capability: the keystore wraps a data key (the key that seals the
// agent's state at rest, ADR 0098) so that only this keystore unwraps it — the TPM seals it under its
// SRK, a token wraps it with an AES key that never leaves it, the software keystore encrypts it under its
// passphrase. The wrap is bound to the keystore, not to any signing key: rotating the identity's key
// does not touch it. The blob is opaque and carries no secret in the clear; UnwrapDataKey on another
// keystore (another TPM, token or passphrase) fails with ErrWrongSecret, ErrNotFound or ErrCorrupt.
// The caller wipes the plaintext it gets back.
type DataKeyWrapper interface {
	WrapDataKey(ctx context.Context, plaintext []byte) ([]byte, error)
	UnwrapDataKey(ctx context.Context, blob []byte) ([]byte, error)
}

// Typed errors. Backends wrap them (with %w) in a message that names what was wrong and what to do, so a
// caller tests the kind with errors.Is and a user reads the sentence.
var (
	ErrNotFound             = errors.New("key not found")
	ErrExists               = errors.New("key already exists")
	ErrUnsupportedAlgorithm = errors.New("algorithm not supported by this keystore")
	ErrBadURI               = errors.New("malformed key URI")
	ErrWrongSecret          = errors.New("wrong PIN or passphrase")
	ErrUnavailable          = errors.New("keystore unavailable")
	ErrKeyLost              = errors.New("key can no longer be loaded")
	ErrCorrupt              = errors.New("key material corrupt or tampered with")
	ErrClosed               = errors.New("keystore closed")
	ErrBadSignature         = errors.New("signature does not verify")
)
