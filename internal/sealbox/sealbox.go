// Package sealbox encrypts values kept at rest under a 32-byte data key: XChaCha20-Poly1305 with a
// random 192-bit nonce (no practical limit on the number of values under one key), and the value's
// place (its store, bucket and key, chosen by the caller) bound in as associated data, so a sealed value
// moved to another place does not open. A sealed value is
//
//	"cs1" || nonce (24 bytes) || ciphertext || tag (16 bytes)
//
// The data key itself is the caller's to keep (wrapped by the keystore, ADR 0098); a Box holds its own
// copy and Close wipes it.
package sealbox

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// KeySize is the size of a data key.
const KeySize = chacha20poly1305.KeySize

// Overhead is how many bytes Seal adds to a value.
const Overhead = len(prefix) + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead

// prefix marks a sealed value and its format version.
const prefix = "cs1"

var magic = []byte(prefix)

// ErrOpen is returned when a value does not open: not sealed, sealed under another key or for another
// place, or altered.
var ErrOpen = errors.New("sealed value does not open (another data key, another place, or altered)")

// Box seals and opens values under one data key. It is safe for concurrent use.
type Box struct {
	key []byte
}

// New returns a Box for key (KeySize bytes). The caller may wipe key afterwards: the Box keeps a copy.
func New(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("data key is %d bytes, want %d", len(key), KeySize)
	}
	return &Box{key: bytes.Clone(key)}, nil
}

// NewKey returns a fresh random data key.
func NewKey() []byte {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		panic("sealbox: crypto/rand failed: " + err.Error())
	}
	return k
}

// Seal encrypts plaintext for place.
func (b *Box) Seal(place, plaintext []byte) []byte {
	aead, err := chacha20poly1305.NewX(b.key)
	if err != nil {
		panic("sealbox: " + err.Error()) // the key size was checked in New
	}
	out := make([]byte, len(magic)+aead.NonceSize(), Overhead+len(plaintext))
	copy(out, magic)
	nonce := out[len(magic):]
	if _, err := rand.Read(nonce); err != nil {
		panic("sealbox: crypto/rand failed: " + err.Error())
	}
	return aead.Seal(out, nonce, plaintext, place)
}

// Open decrypts a value Seal made for place. Any failure is ErrOpen.
func (b *Box) Open(place, sealed []byte) ([]byte, error) {
	if !IsSealed(sealed) {
		return nil, ErrOpen
	}
	aead, err := chacha20poly1305.NewX(b.key)
	if err != nil {
		return nil, ErrOpen
	}
	nonce := sealed[len(magic) : len(magic)+aead.NonceSize()]
	pt, err := aead.Open(nil, nonce, sealed[len(magic)+aead.NonceSize():], place)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// IsSealed reports whether v has the form of a sealed value (its prefix and at least the overhead); it
// says nothing about whether it opens.
func IsSealed(v []byte) bool {
	return len(v) >= Overhead && bytes.HasPrefix(v, magic)
}

// Close wipes the Box's copy of the data key; the Box must not be used afterwards.
func (b *Box) Close() {
	clear(b.key)
}
