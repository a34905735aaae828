// Package suite is the fixed set of primitives the agent protocol uses, each behind a small wrapper that
// checks sizes and refuses degenerate inputs: X25519 (RFC 7748) with the all-zero shared secret refused,
// HKDF-SHA256 (RFC 5869), AES-256-GCM with 96-bit nonces and 128-bit tags, ML-KEM-768 (FIPS 203) for the
// hybrid handshake, and HPKE (RFC 9180) for store-and-forward envelopes. The handshake, session and
// envelope packages call these wrappers, never the standard library directly, and the Wycheproof
// vectors run against them.
package suite

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
)

// Sizes of the primitives' values.
const (
	X25519Size      = 32   // public key, private key and shared secret
	AEADKeySize     = 32   // AES-256
	AEADNonceSize   = 12   // 96-bit GCM nonce
	AEADTagSize     = 16   // 128-bit GCM tag
	HashSize        = 32   // SHA-256
	MLKEMEncapsSize = 1184 // ML-KEM-768 encapsulation key
	MLKEMCipherSize = 1088 // ML-KEM-768 ciphertext
	MLKEMSharedSize = 32
	// MaxHKDF is the longest output HKDF-SHA256 can produce (255 blocks).
	MaxHKDF = 255 * HashSize
)

// ErrLowOrder is returned by X25519 when the shared secret is all zero (the peer's key is of low order).
var ErrLowOrder = errors.New("x25519: the peer's public key gives an all-zero shared secret (low-order point)")

// GenerateX25519 makes a fresh X25519 key pair.
func GenerateX25519() (*ecdh.PrivateKey, error) { return ecdh.X25519().GenerateKey(rand.Reader) }

// X25519 computes the shared secret of priv and the peer's 32-byte public key. It refuses a public key of
// the wrong length and the all-zero result.
func X25519(priv *ecdh.PrivateKey, peer []byte) ([]byte, error) {
	if priv == nil || priv.Curve() != ecdh.X25519() {
		return nil, errors.New("x25519: not an X25519 private key")
	}
	if len(peer) != X25519Size {
		return nil, fmt.Errorf("x25519: public key must be %d bytes, got %d", X25519Size, len(peer))
	}
	pub, err := ecdh.X25519().NewPublicKey(peer)
	if err != nil {
		return nil, fmt.Errorf("x25519: %w", err)
	}
	ss, err := priv.ECDH(pub)
	if err != nil {
		return nil, ErrLowOrder // crypto/ecdh's only X25519 failure is the all-zero output
	}
	var zero [X25519Size]byte
	if subtle.ConstantTimeCompare(ss, zero[:]) == 1 {
		return nil, ErrLowOrder
	}
	return ss, nil
}

// X25519Private parses a 32-byte X25519 private key (a scalar; clamping is applied by the function).
func X25519Private(b []byte) (*ecdh.PrivateKey, error) {
	if len(b) != X25519Size {
		return nil, fmt.Errorf("x25519: private key must be %d bytes, got %d", X25519Size, len(b))
	}
	return ecdh.X25519().NewPrivateKey(b)
}

// HKDF is HKDF-SHA256 (RFC 5869): extract with salt, expand with info to n bytes. n may not exceed MaxHKDF.
func HKDF(secret, salt, info []byte, n int) ([]byte, error) {
	if n <= 0 || n > MaxHKDF {
		return nil, fmt.Errorf("hkdf-sha256: output length %d outside 1..%d", n, MaxHKDF)
	}
	prk, err := hkdf.Extract(sha256.New, secret, salt)
	if err != nil {
		return nil, fmt.Errorf("hkdf-sha256 extract: %w", err)
	}
	defer clear(prk)
	return Expand(prk, info, n)
}

// Expand is HKDF-Expand with SHA-256.
func Expand(prk, info []byte, n int) ([]byte, error) {
	if n <= 0 || n > MaxHKDF {
		return nil, fmt.Errorf("hkdf-sha256: output length %d outside 1..%d", n, MaxHKDF)
	}
	out, err := hkdf.Expand(sha256.New, prk, string(info), n)
	if err != nil {
		return nil, fmt.Errorf("hkdf-sha256 expand: %w", err)
	}
	return out, nil
}

// Extract is HKDF-Extract with SHA-256.
func Extract(secret, salt []byte) ([]byte, error) { return hkdf.Extract(sha256.New, secret, salt) }

// AEAD is AES-256-GCM with a 96-bit nonce and a 128-bit tag, nothing else.
type AEAD struct{ g cipher.AEAD }

// NewAEAD makes an AES-256-GCM instance from a 32-byte key. The key bytes are not retained (the caller
// may wipe them).
func NewAEAD(key []byte) (*AEAD, error) {
	if len(key) != AEADKeySize {
		return nil, fmt.Errorf("aes-256-gcm: key must be %d bytes, got %d", AEADKeySize, len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes-256-gcm: %w", err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, fmt.Errorf("aes-256-gcm: %w", err)
	}
	return &AEAD{g: g}, nil
}

// ErrOpen is returned when a ciphertext does not authenticate.
var ErrOpen = errors.New("aes-256-gcm: message authentication failed")

// Seal appends the encryption of plaintext (ciphertext || tag) to dst.
func (a *AEAD) Seal(dst, nonce, plaintext, aad []byte) ([]byte, error) {
	if len(nonce) != AEADNonceSize {
		return nil, fmt.Errorf("aes-256-gcm: nonce must be %d bytes, got %d", AEADNonceSize, len(nonce))
	}
	return a.g.Seal(dst, nonce, plaintext, aad), nil
}

// Open appends the decryption of ciphertext (ciphertext || tag) to dst, or fails with ErrOpen.
func (a *AEAD) Open(dst, nonce, ciphertext, aad []byte) ([]byte, error) {
	if len(nonce) != AEADNonceSize {
		return nil, fmt.Errorf("aes-256-gcm: nonce must be %d bytes, got %d", AEADNonceSize, len(nonce))
	}
	if len(ciphertext) < AEADTagSize {
		return nil, ErrOpen
	}
	out, err := a.g.Open(dst, nonce, ciphertext, aad)
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}

// MLKEMKey is an ephemeral ML-KEM-768 decapsulation key (the initiator's half of the hybrid handshake).
type MLKEMKey struct{ dk *mlkem.DecapsulationKey768 }

// GenerateMLKEM makes an ML-KEM-768 key pair.
func GenerateMLKEM() (*MLKEMKey, error) {
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		return nil, err
	}
	return &MLKEMKey{dk: dk}, nil
}

// EncapsulationKey is the 1184-byte public encapsulation key.
func (k *MLKEMKey) EncapsulationKey() []byte { return k.dk.EncapsulationKey().Bytes() }

// Decapsulate recovers the shared secret from a 1088-byte ciphertext. ML-KEM decapsulation never fails
// for a well-sized ciphertext (implicit rejection): a tampered ciphertext yields an unrelated secret, which
// the handshake's key confirmation then catches.
func (k *MLKEMKey) Decapsulate(ct []byte) ([]byte, error) {
	if len(ct) != MLKEMCipherSize {
		return nil, fmt.Errorf("ml-kem-768: ciphertext must be %d bytes, got %d", MLKEMCipherSize, len(ct))
	}
	return k.dk.Decapsulate(ct)
}

// MLKEMEncapsulate encapsulates to a 1184-byte encapsulation key: it returns the shared secret and the
// ciphertext.
func MLKEMEncapsulate(ek []byte) (shared, ct []byte, err error) {
	if len(ek) != MLKEMEncapsSize {
		return nil, nil, fmt.Errorf("ml-kem-768: encapsulation key must be %d bytes, got %d", MLKEMEncapsSize, len(ek))
	}
	k, err := mlkem.NewEncapsulationKey768(ek)
	if err != nil {
		return nil, nil, fmt.Errorf("ml-kem-768: %w", err)
	}
	shared, ct = k.Encapsulate()
	return shared, ct, nil
}
