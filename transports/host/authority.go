package host

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/transports/binding"
)

// BindingAuthority signs and verifies transport bindings on the host. The host asks it to Bind only keys
// whose possession a plugin has just proven, and asks it to Verify every binding a peer presents before a
// connection reaches its owner. The production implementation (signed by the operational key, verified
// through the delegation and the key event log) lives in the agent; IdentityAuthority is a small,
// self-contained one.
type BindingAuthority interface {
	// Bind returns an encoded binding (transports/binding) of key to this agent on transport, and its expiry.
	Bind(ctx context.Context, transport string, key ed25519.PublicKey) (binding []byte, notAfter time.Time, err error)
	// Verify checks that binding is valid now, is for transport, names key, and returns the agent ID it
	// binds the key to. Errors wrap ErrBadBinding.
	Verify(ctx context.Context, transport string, binding []byte, key ed25519.PublicKey) (agentID string, err error)
}

// ErrBadBinding: a transport binding is malformed, expired, for another key or transport, or its proof
// does not verify.
var ErrBadBinding = errors.New("invalid transport binding")

// MaxBindingTTL is the longest binding lifetime IdentityAuthority signs or accepts.
const MaxBindingTTL = 24 * time.Hour

// IdentityAuthority signs bindings directly with an agent's identity (inception) key, the agent ID being
// that key; it verifies a binding with the key its agent ID names, so it needs no trust store. It fits
// tests, demos and the strict mode of a generation-0 agent; after a rotation the agent's
// delegation-based authority must be used instead.
type IdentityAuthority struct {
	signer keystore.Signer
	id     string
	ttl    time.Duration
	now    func() time.Time
}

// NewIdentityAuthority makes an authority for the agent whose inception key signer holds. ttl is the
// lifetime of each binding (default 1 h, at most MaxBindingTTL).
func NewIdentityAuthority(signer keystore.Signer, ttl time.Duration) (*IdentityAuthority, error) {
	if ttl == 0 {
		ttl = time.Hour
	}
	if ttl < time.Second || ttl > MaxBindingTTL {
		return nil, fmt.Errorf("binding lifetime %v is outside 1s..%v", ttl, MaxBindingTTL)
	}
	return &IdentityAuthority{signer: signer, id: identity.NewID(signer.Public()).String(), ttl: ttl, now: time.Now}, nil
}

// AgentID is the ID bindings are signed for.
func (a *IdentityAuthority) AgentID() string { return a.id }

// SetClock replaces the clock (tests).
func (a *IdentityAuthority) SetClock(now func() time.Time) { a.now = now }

// Bind implements BindingAuthority.
func (a *IdentityAuthority) Bind(ctx context.Context, transport string, key ed25519.PublicKey) ([]byte, time.Time, error) {
	if len(key) != ed25519.PublicKeySize {
		return nil, time.Time{}, fmt.Errorf("bind: transport key is %d bytes, want %d", len(key), ed25519.PublicKeySize)
	}
	b := binding.Binding{Transport: transport, Key: key, AgentID: a.id, NotAfter: a.now().Add(a.ttl).Truncate(time.Second)}
	sig, err := a.signer.Sign(ctx, b.SigningInput())
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("bind %s transport key: %w", transport, err)
	}
	b.Proof = sig
	return b.Encode(), b.NotAfter, nil
}

// Verify implements BindingAuthority.
func (a *IdentityAuthority) Verify(_ context.Context, transport string, raw []byte, key ed25519.PublicKey) (string, error) {
	b, err := binding.CheckFor(raw, transport, key)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadBinding, err)
	}
	now := a.now()
	if !now.Before(b.NotAfter) {
		return "", fmt.Errorf("%w: expired at %s (now %s)", ErrBadBinding, b.NotAfter.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if b.NotAfter.Sub(now) > MaxBindingTTL+time.Minute {
		return "", fmt.Errorf("%w: expiry %s is more than %v ahead", ErrBadBinding, b.NotAfter.Format(time.RFC3339), MaxBindingTTL)
	}
	id, err := identity.ParseID(b.AgentID)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadBinding, err)
	}
	if err := id.PublicKey().Verify(b.SigningInput(), b.Proof); err != nil {
		return "", fmt.Errorf("%w: signature by %s does not verify: %v", ErrBadBinding, b.AgentID, err)
	}
	return b.AgentID, nil
}
