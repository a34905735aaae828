package hosttest

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/host"
)

// IdentityAuthority is a host.BindingAuthority for tests: it signs bindings directly with an agent's
// identity (inception) key, the agent ID being that key, and verifies a binding with the key its agent ID
// names, so it needs no trust store. The daemon's authority (agent/bindauth) signs with the operational
// key instead and verifies through the delegation and the key event log.
type IdentityAuthority struct {
	signer keystore.Signer
	id     string
	ttl    time.Duration
	now    func() time.Time
}

// NewIdentityAuthority makes an authority for the agent whose inception key signer holds. ttl is the
// lifetime of each binding (default 1 h, at most host.MaxBindingTTL).
func NewIdentityAuthority(signer keystore.Signer, ttl time.Duration) (*IdentityAuthority, error) {
	if ttl == 0 {
		ttl = time.Hour
	}
	if ttl < time.Second || ttl > host.MaxBindingTTL {
		return nil, fmt.Errorf("binding lifetime %v is outside 1s..%v", ttl, host.MaxBindingTTL)
	}
	return &IdentityAuthority{signer: signer, id: identity.NewID(signer.Public()).String(), ttl: ttl, now: time.Now}, nil
}

// AgentID is the ID bindings are signed for.
func (a *IdentityAuthority) AgentID() string { return a.id }

// SetClock replaces the clock.
func (a *IdentityAuthority) SetClock(now func() time.Time) { a.now = now }

// Bind implements host.BindingAuthority.
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

// Verify implements host.BindingAuthority.
func (a *IdentityAuthority) Verify(_ context.Context, transport string, raw []byte, key ed25519.PublicKey) (string, error) {
	b, err := binding.CheckFor(raw, transport, key)
	if err != nil {
		return "", fmt.Errorf("%w: %v", host.ErrBadBinding, err)
	}
	now := a.now()
	if !now.Before(b.NotAfter) {
		return "", fmt.Errorf("%w: expired at %s (now %s)", host.ErrBadBinding, b.NotAfter.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if b.NotAfter.Sub(now) > host.MaxBindingTTL+time.Minute {
		return "", fmt.Errorf("%w: expiry %s is more than %v ahead", host.ErrBadBinding, b.NotAfter.Format(time.RFC3339), host.MaxBindingTTL)
	}
	id, err := identity.ParseID(b.AgentID)
	if err != nil {
		return "", fmt.Errorf("%w: %v", host.ErrBadBinding, err)
	}
	if err := id.PublicKey().Verify(b.SigningInput(), b.Proof); err != nil {
		return "", fmt.Errorf("%w: signature by %s does not verify: %v", host.ErrBadBinding, b.AgentID, err)
	}
	return b.AgentID, nil
}
