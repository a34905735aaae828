package keystore

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// PublicKey is a public key together with its algorithm.
type PublicKey struct {
	Algorithm Algorithm
	key       crypto.PublicKey // ed25519.PublicKey or *ecdsa.PublicKey (P-256)
}

// NewPublicKey wraps a crypto public key. It accepts ed25519.PublicKey and *ecdsa.PublicKey on P-256.
func NewPublicKey(k crypto.PublicKey) (PublicKey, error) {
	switch k := k.(type) {
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return PublicKey{}, errorf(ErrUnsupportedAlgorithm, "ed25519 public key of %d bytes", len(k))
		}
		return PublicKey{Algorithm: Ed25519, key: append(ed25519.PublicKey(nil), k...)}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return PublicKey{}, errorf(ErrUnsupportedAlgorithm, "ECDSA key on curve %s (only P-256)", k.Curve.Params().Name)
		}
		return PublicKey{Algorithm: P256, key: k}, nil
	default:
		return PublicKey{}, errorf(ErrUnsupportedAlgorithm, "public key of type %T", k)
	}
}

// ParsePublicKey decodes the raw encoding of Bytes: 32 bytes for Ed25519, a 33-byte compressed point
// (SEC 1) for P-256.
func ParsePublicKey(alg Algorithm, raw []byte) (PublicKey, error) {
	switch alg {
	case Ed25519:
		if len(raw) != ed25519.PublicKeySize {
			return PublicKey{}, fmt.Errorf("ed25519 public key must be 32 bytes, got %d", len(raw))
		}
		return PublicKey{Algorithm: Ed25519, key: ed25519.PublicKey(append([]byte(nil), raw...))}, nil
	case P256:
		if len(raw) != 33 || (raw[0] != 2 && raw[0] != 3) {
			return PublicKey{}, fmt.Errorf("p256 public key must be a 33-byte compressed point, got %d bytes", len(raw))
		}
		x, y := elliptic.UnmarshalCompressed(elliptic.P256(), raw)
		if x == nil {
			return PublicKey{}, fmt.Errorf("p256 public key is not a point on the curve")
		}
		uncompressed := make([]byte, 65)
		uncompressed[0] = 4
		x.FillBytes(uncompressed[1:33])
		y.FillBytes(uncompressed[33:])
		k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), uncompressed)
		if err != nil {
			return PublicKey{}, fmt.Errorf("p256 public key: %v", err)
		}
		return PublicKey{Algorithm: P256, key: k}, nil
	default:
		return PublicKey{}, errorf(ErrUnsupportedAlgorithm, "algorithm %q", alg)
	}
}

// ParsePublicKeyPEM decodes an SPKI ("PUBLIC KEY") PEM block.
func ParsePublicKeyPEM(data []byte) (PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return PublicKey{}, fmt.Errorf("no PEM \"PUBLIC KEY\" block found")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return PublicKey{}, fmt.Errorf("parse SPKI public key: %w", err)
	}
	return NewPublicKey(k)
}

// IsZero reports whether p holds no key.
func (p PublicKey) IsZero() bool { return p.key == nil }

// Crypto returns the standard-library key (ed25519.PublicKey or *ecdsa.PublicKey).
func (p PublicKey) Crypto() crypto.PublicKey { return p.key }

// Bytes is the raw encoding: 32 bytes (Ed25519) or a 33-byte compressed point (P-256).
func (p PublicKey) Bytes() []byte {
	switch k := p.key.(type) {
	case ed25519.PublicKey:
		return append([]byte(nil), k...)
	case *ecdsa.PublicKey:
		u, err := k.Bytes() // uncompressed SEC 1: 0x04 || X || Y
		if err != nil || len(u) != 65 {
			return nil
		}
		out := make([]byte, 33)
		out[0] = 2 | u[64]&1
		copy(out[1:], u[1:33])
		return out
	}
	return nil
}

// Digest is SHA-256 over the algorithm name, a zero byte, and Bytes: the commitment used for
// pre-committed next keys and recovery keys.
func (p PublicKey) Digest() [32]byte {
	h := sha256.New()
	h.Write([]byte(p.Algorithm))
	h.Write([]byte{0})
	h.Write(p.Bytes())
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// Equal reports whether p and q are the same key with the same algorithm.
func (p PublicKey) Equal(q PublicKey) bool {
	if p.Algorithm != q.Algorithm || p.key == nil || q.key == nil {
		return false
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := p.key.(equaler)
	return ok && e.Equal(q.key)
}

// PEM is the SubjectPublicKeyInfo PEM encoding, readable by openssl.
func (p PublicKey) PEM() []byte {
	der, err := x509.MarshalPKIXPublicKey(p.key)
	if err != nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// Verify checks sig over message with the algorithm of p: Ed25519 over the message itself; ECDSA P-256
// over SHA-256(message) with a DER signature. It returns ErrBadSignature when the signature does not verify.
func (p PublicKey) Verify(message, sig []byte) error {
	switch k := p.key.(type) {
	case ed25519.PublicKey:
		if len(sig) != ed25519.SignatureSize {
			return errorf(ErrBadSignature, "ed25519 signature must be %d bytes, got %d", ed25519.SignatureSize, len(sig))
		}
		if !ed25519.Verify(k, message, sig) {
			return ErrBadSignature
		}
		return nil
	case *ecdsa.PublicKey:
		digest := sha256.Sum256(message)
		if !ecdsa.VerifyASN1(k, digest[:], sig) {
			return ErrBadSignature
		}
		return nil
	}
	return errorf(ErrUnsupportedAlgorithm, "cannot verify with an empty public key")
}

func p256() elliptic.Curve { return elliptic.P256() }
