package suite

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
)

// KEM is the HPKE KEM identifier (RFC 9180 registry) of an encryption key.
type KEM uint16

// The KEMs an agent's delegated encryption key may use.
const (
	// KEMX25519 is DHKEM(X25519, HKDF-SHA256): 32-byte public keys and encapsulations.
	KEMX25519 KEM = 0x0020
	// KEMXWing is MLKEM768-X25519 ("X-Wing", draft-ietf-hpke-pq): 1216-byte public keys, 1120-byte
	// encapsulations; secure if either ML-KEM-768 or X25519 holds.
	KEMXWing KEM = 0x647a
)

// Valid reports whether k is one of the supported KEMs.
func (k KEM) Valid() bool { return k == KEMX25519 || k == KEMXWing }

// String names the KEM.
func (k KEM) String() string {
	switch k {
	case KEMX25519:
		return "x25519"
	case KEMXWing:
		return "mlkem768x25519"
	}
	return fmt.Sprintf("kem-0x%04x", uint16(k))
}

// PublicKeySize is the size of the KEM's serialised public key.
func (k KEM) PublicKeySize() int {
	switch k {
	case KEMX25519:
		return 32
	case KEMXWing:
		return 1216
	}
	return 0
}

// EncapsulationSize is the size of the KEM's encapsulated key ("enc").
func (k KEM) EncapsulationSize() int {
	switch k {
	case KEMX25519:
		return 32
	case KEMXWing:
		return 1120
	}
	return 0
}

func (k KEM) hpke() (hpke.KEM, error) {
	switch k {
	case KEMX25519:
		return hpke.DHKEM(ecdh.X25519()), nil
	case KEMXWing:
		return hpke.MLKEM768X25519(), nil
	}
	return nil, fmt.Errorf("hpke: unsupported KEM 0x%04x", uint16(k))
}

// The HPKE KDF and AEAD are fixed: HKDF-SHA256 and AES-256-GCM.
func kdf() hpke.KDF   { return hpke.HKDFSHA256() }
func aead() hpke.AEAD { return hpke.AES256GCM() }

// ErrWiped is returned by an EncryptionKey used after Wipe.
var ErrWiped = errors.New("the encryption key has expired and was wiped")

// EncryptionKey is an HPKE private key held as its 32-byte seed (the X25519 scalar, or the X-Wing seed),
// which Wipe zeroes. (The standard library's expanded copy inside hpke.PrivateKey cannot be zeroed; Wipe
// drops the reference to it.)
type EncryptionKey struct {
	kem  KEM
	mu   sync.RWMutex
	seed []byte
	priv hpke.PrivateKey
	pub  []byte
}

// GenerateEncryptionKey makes a fresh encryption key for k.
func GenerateEncryptionKey(k KEM) (*EncryptionKey, error) {
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	return NewEncryptionKey(k, seed)
}

// NewEncryptionKey makes an encryption key from a 32-byte seed (which it keeps and later wipes).
func NewEncryptionKey(k KEM, seed []byte) (*EncryptionKey, error) {
	hk, err := k.hpke()
	if err != nil {
		return nil, err
	}
	if len(seed) != 32 {
		return nil, fmt.Errorf("hpke %s: private key seed must be 32 bytes, got %d", k, len(seed))
	}
	priv, err := hk.NewPrivateKey(seed)
	if err != nil {
		return nil, fmt.Errorf("hpke %s: %w", k, err)
	}
	return &EncryptionKey{kem: k, seed: seed, priv: priv, pub: priv.PublicKey().Bytes()}, nil
}

// KEM is the key's KEM.
func (e *EncryptionKey) KEM() KEM { return e.kem }

// Public is the serialised public key.
func (e *EncryptionKey) Public() []byte { return append([]byte(nil), e.pub...) }

// Wipe zeroes the seed and drops the private key. Open fails with ErrWiped afterwards.
func (e *EncryptionKey) Wipe() {
	e.mu.Lock()
	defer e.mu.Unlock()
	clear(e.seed)
	e.seed, e.priv = nil, nil
}

// Open decrypts an HPKE base-mode message (single shot, sequence 0): enc is the encapsulated key.
func (e *EncryptionKey) Open(enc, info, aad, ct []byte) ([]byte, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.priv == nil {
		return nil, ErrWiped
	}
	if len(enc) != e.kem.EncapsulationSize() {
		return nil, fmt.Errorf("hpke %s: encapsulated key must be %d bytes, got %d", e.kem, e.kem.EncapsulationSize(), len(enc))
	}
	r, err := hpke.NewRecipient(enc, e.priv, kdf(), aead(), info)
	if err != nil {
		return nil, fmt.Errorf("hpke %s: %w", e.kem, err)
	}
	pt, err := r.Open(aad, ct)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// HPKESeal encrypts plaintext to the serialised public key pub of KEM k in HPKE base mode with HKDF-SHA256
// and AES-256-GCM; it returns the encapsulated key and the ciphertext (with tag).
func HPKESeal(k KEM, pub, info, aad, plaintext []byte) (enc, ct []byte, err error) {
	hk, err := k.hpke()
	if err != nil {
		return nil, nil, err
	}
	if len(pub) != k.PublicKeySize() {
		return nil, nil, fmt.Errorf("hpke %s: public key must be %d bytes, got %d", k, k.PublicKeySize(), len(pub))
	}
	pk, err := hk.NewPublicKey(pub)
	if err != nil {
		return nil, nil, fmt.Errorf("hpke %s: %w", k, err)
	}
	enc, s, err := hpke.NewSender(pk, kdf(), aead(), info)
	if err != nil {
		return nil, nil, fmt.Errorf("hpke %s: %w", k, err)
	}
	ct, err = s.Seal(aad, plaintext)
	if err != nil {
		return nil, nil, fmt.Errorf("hpke %s: %w", k, err)
	}
	return enc, ct, nil
}

// CheckPublicKey reports whether pub is a well-formed public key of KEM k.
func CheckPublicKey(k KEM, pub []byte) error {
	hk, err := k.hpke()
	if err != nil {
		return err
	}
	if len(pub) != k.PublicKeySize() {
		return fmt.Errorf("hpke %s: public key must be %d bytes, got %d", k, k.PublicKeySize(), len(pub))
	}
	if _, err := hk.NewPublicKey(pub); err != nil {
		return fmt.Errorf("hpke %s: %w", k, err)
	}
	return nil
}
