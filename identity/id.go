// Package identity is an agent's identity over time: the agent ID (its inception key) and the key event
// log that carries it through rotations and recoveries (DESIGN 3.1, 3.3).
package identity

import (
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/custos-agent/custos/keystore"
)

// b64 is the one base64 variant Custos uses in text: URL-safe alphabet, no padding. Decoding is strict
// (padding, the standard alphabet and non-canonical trailing bits are refused).
var b64 = base64.RawURLEncoding.Strict()

// ID is an agent ID: "ed25519:<base64url raw 32-byte key>" or "p256:<base64url compressed point>". It is
// the agent's inception (generation 0) key and stays the agent's ID across rotations.
type ID struct{ key keystore.PublicKey }

// NewID makes the ID of an inception key.
func NewID(inception keystore.PublicKey) ID { return ID{key: inception} }

// ParseID parses the text form of an ID.
func ParseID(s string) (ID, error) {
	alg, enc, ok := strings.Cut(s, ":")
	if !ok {
		return ID{}, fmt.Errorf("agent ID %q: want ALG:BASE64URL (ed25519:... or p256:...)", s)
	}
	a, err := keystore.ParseAlgorithm(alg)
	if err != nil {
		return ID{}, fmt.Errorf("agent ID %q: %w", s, err)
	}
	raw, err := b64.DecodeString(enc)
	if err != nil {
		return ID{}, fmt.Errorf("agent ID %q: key is not unpadded base64url: %v", s, err)
	}
	pub, err := keystore.ParsePublicKey(a, raw)
	if err != nil {
		return ID{}, fmt.Errorf("agent ID %q: %w", s, err)
	}
	return ID{key: pub}, nil
}

// String is the text form.
func (id ID) String() string {
	if id.key.IsZero() {
		return ""
	}
	return string(id.key.Algorithm) + ":" + b64.EncodeToString(id.key.Bytes())
}

// IsZero reports whether id is empty.
func (id ID) IsZero() bool { return id.key.IsZero() }

// PublicKey is the inception key.
func (id ID) PublicKey() keystore.PublicKey { return id.key }

// Equal compares two IDs.
func (id ID) Equal(o ID) bool { return id.key.Equal(o.key) }

// MarshalText implements encoding.TextMarshaler.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// EncodeKey is the text form of a public key inside events: base64url of keystore.PublicKey.Bytes.
func EncodeKey(p keystore.PublicKey) string { return b64.EncodeToString(p.Bytes()) }

// DecodeKey parses EncodeKey's form.
func DecodeKey(alg keystore.Algorithm, s string) (keystore.PublicKey, error) {
	raw, err := b64.DecodeString(s)
	if err != nil {
		return keystore.PublicKey{}, fmt.Errorf("key is not unpadded base64url: %v", err)
	}
	return keystore.ParsePublicKey(alg, raw)
}

// Base64 returns the strict unpadded base64url encoding every Custos text format uses.
func Base64() *base64.Encoding { return b64 }
