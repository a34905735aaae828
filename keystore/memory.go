package keystore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
)

// memorySigner signs with a private key held in process memory. The software backend and the agent's
// short-lived operational keys use it; hardware backends never do.
type memorySigner struct {
	priv crypto.Signer
	pub  PublicKey
}

// NewMemorySigner wraps an ed25519.PrivateKey or a P-256 *ecdsa.PrivateKey.
func NewMemorySigner(priv crypto.Signer) (Signer, error) {
	pub, err := NewPublicKey(priv.Public())
	if err != nil {
		return nil, err
	}
	return &memorySigner{priv: priv, pub: pub}, nil
}

func (m *memorySigner) Public() PublicKey { return m.pub }

func (m *memorySigner) Sign(ctx context.Context, message []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch k := m.priv.(type) {
	case ed25519.PrivateKey:
		return ed25519.Sign(k, message), nil
	case *ecdsa.PrivateKey:
		d := sha256.Sum256(message)
		return ecdsa.SignASN1(rand.Reader, k, d[:])
	}
	return nil, errorf(ErrUnsupportedAlgorithm, "private key of type %T", m.priv)
}

// GenerateMemorySigner makes a fresh in-memory key of alg.
func GenerateMemorySigner(alg Algorithm) (Signer, error) {
	switch alg {
	case Ed25519:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return NewMemorySigner(priv)
	case P256:
		priv, err := ecdsa.GenerateKey(p256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		return NewMemorySigner(priv)
	}
	return nil, errorf(ErrUnsupportedAlgorithm, "algorithm %q", alg)
}
