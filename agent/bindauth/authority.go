// Package bindauth is the agent's authority over transport bindings (host.BindingAuthority): it signs the
// binding of each transport plugin's key with the operational key (the current delegation, never the
// identity key), carrying the delegation and, when it fits, the key event log in a CBP1 proof; and it
// verifies a peer's binding through that peer's key event log (the one in the proof, merged into the peer
// cache, or the cached one) and delegation (ADR 0021).
package bindauth

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/host"
)

// proofMagic starts the proof of a binding signed by an operational key (docs/adr/0021).
const proofMagic = "CBP1"

// DefaultBindingTTL is the longest lifetime of a transport binding the Authority signs (it never outlives
// the delegation that signs it).
const DefaultBindingTTL = time.Hour

// Proof is what an Authority puts in a binding's opaque proof: the delegation that certifies the
// operational key, that key's signature over the binding, and the agent's key event log when it fits.
type Proof struct {
	Delegation []byte
	Signature  []byte
	KeyLog     []byte // JSON lines; empty when it does not fit in binding.MaxProofSize
}

// Encode is "CBP1" then the three fields, each a 4-byte big-endian length and its bytes.
func (p *Proof) Encode() []byte {
	out := []byte(proofMagic)
	for _, f := range [][]byte{p.Delegation, p.Signature, p.KeyLog} {
		out = binary.BigEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	return out
}

// DecodeProof strictly decodes Encode's form.
func DecodeProof(b []byte) (*Proof, error) {
	if len(b) > binding.MaxProofSize || !bytes.HasPrefix(b, []byte(proofMagic)) {
		return nil, errors.New("binding proof is not a CBP1 proof")
	}
	b = b[len(proofMagic):]
	var fields [3][]byte
	for i := range fields {
		if len(b) < 4 {
			return nil, errors.New("binding proof is truncated")
		}
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		if uint64(n) > uint64(len(b)) {
			return nil, errors.New("binding proof field runs past the end")
		}
		fields[i], b = b[:n], b[n:]
	}
	if len(b) != 0 {
		return nil, errors.New("binding proof has trailing bytes")
	}
	if len(fields[0]) == 0 || len(fields[1]) == 0 {
		return nil, errors.New("binding proof without delegation or signature")
	}
	return &Proof{Delegation: fields[0], Signature: fields[1], KeyLog: fields[2]}, nil
}

// Authority is the production host.BindingAuthority: it signs transport bindings with the agent's
// operational key (the current delegation), carrying the delegation and, when it fits, the key event log
// in the proof; it verifies a peer's binding through its key event log (the one in the proof, merged into
// the peer cache, or else the cached one), delegation.VerifyOperationalKey, and the operational key's
// signature. The identity key (TPM, token) never signs a binding.
type Authority struct {
	self   identity.ID
	dm     *delegation.Manager
	cache  *peers.Cache
	ownLog func() *identity.Log
	ttl    time.Duration
	now    func() time.Time
}

// NewAuthority makes the authority of agent self.
func NewAuthority(self identity.ID, dm *delegation.Manager, cache *peers.Cache, ownLog func() *identity.Log, ttl time.Duration) *Authority {
	if ttl <= 0 || ttl > host.MaxBindingTTL {
		ttl = DefaultBindingTTL
	}
	return &Authority{self: self, dm: dm, cache: cache, ownLog: ownLog, ttl: ttl, now: time.Now}
}

// NewVerifier makes an authority that only verifies bindings, through cache (and the key event logs the
// bindings carry): what a client that knows an agent's ID, but is no agent, verifies a gateway's
// certificate with (agent/gateway ClientTLSConfig, gateway.tls.bind_agent_id). Its Bind fails.
func NewVerifier(cache *peers.Cache) *Authority {
	return &Authority{cache: cache, ttl: DefaultBindingTTL, now: time.Now}
}

// Bind implements host.BindingAuthority.
func (a *Authority) Bind(ctx context.Context, transport string, key ed25519.PublicKey) ([]byte, time.Time, error) {
	if a.dm == nil {
		return nil, time.Time{}, errors.New("bind: this authority only verifies (bindauth.NewVerifier)")
	}
	if len(key) != ed25519.PublicKeySize {
		return nil, time.Time{}, fmt.Errorf("bind: transport key is %d bytes, want %d", len(key), ed25519.PublicKeySize)
	}
	keys, err := a.dm.Current(ctx)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("bind %s transport key: %w", transport, err)
	}
	notAfter := a.now().Add(a.ttl)
	if na := keys.NotAfter(); na.Before(notAfter) {
		notAfter = na
	}
	b := binding.Binding{Transport: transport, Key: key, AgentID: a.self.String(), NotAfter: notAfter.Truncate(time.Second)}
	sig, err := keys.Signer().Sign(ctx, b.SigningInput())
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("bind %s transport key: %w", transport, err)
	}
	p := &Proof{Delegation: keys.Encoded(), Signature: sig, KeyLog: a.ownLog().Encode()}
	if len(p.Encode()) > binding.MaxProofSize {
		p.KeyLog = nil // peers fall back to their cached copy of the log (docs/adr/0021)
	}
	b.Proof = p.Encode()
	return b.Encode(), b.NotAfter, nil
}

// Verify implements host.BindingAuthority.
func (a *Authority) Verify(_ context.Context, transport string, raw []byte, key ed25519.PublicKey) (string, error) {
	b, err := binding.CheckFor(raw, transport, key)
	if err != nil {
		return "", fmt.Errorf("%w: %v", host.ErrBadBinding, err)
	}
	now := a.now()
	if !now.Before(b.NotAfter) {
		return "", fmt.Errorf("%w: expired at %s (now %s)", host.ErrBadBinding, b.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if b.NotAfter.Sub(now) > host.MaxBindingTTL+time.Minute {
		return "", fmt.Errorf("%w: expiry %s is more than %v ahead", host.ErrBadBinding, b.NotAfter.UTC().Format(time.RFC3339), host.MaxBindingTTL)
	}
	id, err := identity.ParseID(b.AgentID)
	if err != nil {
		return "", fmt.Errorf("%w: %v", host.ErrBadBinding, err)
	}
	p, err := DecodeProof(b.Proof)
	if err != nil {
		return "", fmt.Errorf("%w: %v", host.ErrBadBinding, err)
	}
	d, err := delegation.Decode(p.Delegation)
	if err != nil {
		return "", fmt.Errorf("%w: delegation: %v", host.ErrBadBinding, err)
	}
	st, err := a.state(id, p.KeyLog)
	if err != nil {
		return "", fmt.Errorf("%w: %v", host.ErrBadBinding, err)
	}
	op, err := delegation.VerifyOperationalKey(id, st, d, now)
	if err != nil {
		return "", fmt.Errorf("%w: delegation of %s: %v", host.ErrBadBinding, id, err)
	}
	if b.NotAfter.After(time.Unix(d.NotAfter, 0)) {
		return "", fmt.Errorf("%w: the binding outlives the delegation that signs it", host.ErrBadBinding)
	}
	if err := op.Verify(b.SigningInput(), p.Signature); err != nil {
		return "", fmt.Errorf("%w: signature by %s's operational key does not verify: %v", host.ErrBadBinding, id, err)
	}
	return b.AgentID, nil
}

// state is the verified key event log state of id: its own log for this agent; else the log in the proof
// (verified, merged into the peer cache, which detects forks and refuses compromised peers), or the
// cached one.
func (a *Authority) state(id identity.ID, kel []byte) (identity.State, error) {
	if id.Equal(a.self) {
		return a.ownLog().Verify()
	}
	if len(kel) > 0 {
		l, err := identity.DecodeLog(kel)
		if err != nil {
			return identity.State{}, fmt.Errorf("key event log of %s: %v", id, err)
		}
		return a.cache.UpdateLog(id, &l)
	}
	st, ok, err := a.cache.State(id.String())
	if err != nil {
		return identity.State{}, err
	}
	if !ok {
		return identity.State{}, fmt.Errorf("the binding of %s carries no key event log (too large for a binding) and none is cached from an earlier session", id)
	}
	return st, nil
}
