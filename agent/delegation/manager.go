package delegation

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// Keys is one delegation together with the private keys it certifies. The private keys live in process
// memory only and are zeroed by Wipe (the Manager wipes them when the delegation expires).
type Keys struct {
	Delegation *Delegation
	encoded    []byte
	notAfter   time.Time
	op         *opSigner       // nil in strict mode
	identity   keystore.Signer // strict mode: the identity key signs
	enc        *suite.EncryptionKey
}

// Encoded is the delegation's binary form (what the handshake sends).
func (k *Keys) Encoded() []byte { return k.encoded }

// NotAfter is when the delegation (and its keys) expire.
func (k *Keys) NotAfter() time.Time { return k.notAfter }

// Signer signs with the operational key (the identity key in strict mode). After Wipe it fails with
// reason.DelegationUnavailable.
func (k *Keys) Signer() keystore.Signer {
	if k.op != nil {
		return k.op
	}
	return k.identity
}

// Encryption is the HPKE private key certified by the delegation.
func (k *Keys) Encryption() *suite.EncryptionKey { return k.enc }

// Wipe zeroes the operational and encryption private keys.
func (k *Keys) Wipe() {
	if k.op != nil {
		k.op.wipe()
	}
	k.enc.Wipe()
}

// opSigner is an in-memory Ed25519 key that can be zeroed.
type opSigner struct {
	mu   sync.RWMutex
	priv ed25519.PrivateKey
	pub  keystore.PublicKey
}

func newOpSigner() (*opSigner, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	pk, err := keystore.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return &opSigner{priv: priv, pub: pk}, nil
}

func (s *opSigner) Public() keystore.PublicKey { return s.pub }

func (s *opSigner) Sign(ctx context.Context, message []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.priv == nil {
		return nil, reason.New(reason.DelegationUnavailable, "the operational key expired and was wiped; use the current delegation")
	}
	return ed25519.Sign(s.priv, message), nil
}

func (s *opSigner) wipe() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.priv)
	s.priv = nil
}

// Config configures a Manager.
type Config struct {
	// Identity signs delegations; it must be the current key of State.
	Identity keystore.Signer
	// State is the verified state of the agent's own key event log.
	State identity.State
	// Mode is Delegated (default) or Strict.
	Mode Mode
	// KEM of the encryption key: suite.KEMX25519 (default) or suite.KEMXWing.
	KEM suite.KEM
	// Lifetime of each delegation (default DefaultLifetime, at most MaxLifetime).
	Lifetime time.Duration
	// RenewBefore: a new delegation is issued when the current one has less than this left (default
	// Lifetime/2, so two delegations overlap and sessions can re-authenticate onto the new one in time).
	RenewBefore time.Duration
	// Backdate sets not-before this far before issue, for verifiers whose clocks lag (default 1 minute).
	Backdate time.Duration
	// Clock returns the time (default time.Now).
	Clock func() time.Time
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// OnIssue, when set, is called with every delegation the manager issues, once it is in use (the
	// daemon's audit record key.delegate). It runs with the manager's lock held: it must not call the
	// manager.
	OnIssue func(*Delegation)
}

// Manager issues and renews the agent's delegations and holds their keys: the current one, and older
// ones until they expire (sessions established under them re-authenticate before then; store-and-forward
// messages sealed to their encryption keys can still be opened). Safe for concurrent use.
type Manager struct {
	mu   sync.Mutex
	cfg  Config
	keys []*Keys // newest first; every entry is unexpired or about to be swept
}

// NewManager checks cfg and issues the first delegation (one identity-key signature).
func NewManager(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Identity == nil {
		return nil, errors.New("delegation manager: no identity signer")
	}
	if cfg.Mode == "" {
		cfg.Mode = Delegated
	}
	if cfg.Mode != Delegated && cfg.Mode != Strict {
		return nil, fmt.Errorf("delegation manager: mode %q: want delegated or strict", cfg.Mode)
	}
	if cfg.KEM == 0 {
		cfg.KEM = suite.KEMX25519
	}
	if !cfg.KEM.Valid() {
		return nil, fmt.Errorf("delegation manager: unsupported KEM 0x%04x", uint16(cfg.KEM))
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.Lifetime < 2*time.Minute || cfg.Lifetime > MaxLifetime {
		return nil, fmt.Errorf("delegation manager: lifetime %s outside 2m..%s", cfg.Lifetime, MaxLifetime)
	}
	if cfg.RenewBefore == 0 {
		cfg.RenewBefore = cfg.Lifetime / 2
	}
	if cfg.RenewBefore <= 0 || cfg.RenewBefore >= cfg.Lifetime {
		return nil, fmt.Errorf("delegation manager: renew-before %s must be inside the lifetime %s", cfg.RenewBefore, cfg.Lifetime)
	}
	if cfg.Backdate == 0 {
		cfg.Backdate = time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Manager{cfg: cfg}
	if _, err := m.Renew(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Mode is the manager's mode.
func (m *Manager) Mode() Mode { return m.cfg.Mode }

// State is the identity state delegations are issued under.
func (m *Manager) State() identity.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.State
}

// Renew issues a new delegation now, whatever the state of the current one.
func (m *Manager) Renew(ctx context.Context) (*Keys, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.renewLocked(ctx)
}

func (m *Manager) renewLocked(ctx context.Context) (*Keys, error) {
	now := m.cfg.Clock()
	enc, err := suite.GenerateEncryptionKey(m.cfg.KEM)
	if err != nil {
		return nil, fmt.Errorf("delegation: generate encryption key: %w", err)
	}
	k := &Keys{enc: enc}
	opPub := m.cfg.Identity.Public()
	if m.cfg.Mode == Delegated {
		if k.op, err = newOpSigner(); err != nil {
			return nil, fmt.Errorf("delegation: generate operational key: %w", err)
		}
		opPub = k.op.Public()
	} else {
		k.identity = m.cfg.Identity
	}
	d, err := Issue(ctx, m.cfg.Identity, m.cfg.State, m.cfg.Mode, opPub, m.cfg.KEM, enc.Public(),
		now.Add(-m.cfg.Backdate), now.Add(m.cfg.Lifetime))
	if err != nil {
		k.Wipe()
		return nil, err
	}
	k.Delegation, k.encoded, k.notAfter = d, d.Encode(), time.Unix(d.NotAfter, 0)
	m.keys = append([]*Keys{k}, m.keys...)
	m.cfg.Logger.Info("delegation issued", "agent", d.AgentID, "generation", d.Generation, "mode", d.Mode,
		"not_after", k.notAfter.UTC().Format(time.RFC3339))
	if m.cfg.OnIssue != nil {
		m.cfg.OnIssue(d)
	}
	m.sweepLocked(now)
	return k, nil
}

// Current returns the delegation to present now, renewing first (one identity-key signature) when the
// current one has less than RenewBefore left.
func (m *Manager) Current(ctx context.Context) (*Keys, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock()
	m.sweepLocked(now)
	if len(m.keys) > 0 && m.keys[0].notAfter.Sub(now) > m.cfg.RenewBefore {
		return m.keys[0], nil
	}
	k, err := m.renewLocked(ctx)
	if err != nil {
		if len(m.keys) > 0 && now.Before(m.keys[0].notAfter) {
			m.cfg.Logger.Warn("delegation renewal failed; using the current one until it expires", "err", err)
			return m.keys[0], nil
		}
		return nil, reason.Wrap(reason.DelegationUnavailable, err, "no valid delegation and the identity key could not sign a new one")
	}
	return k, nil
}

// Live returns every unexpired delegation's keys, newest first (for opening store-and-forward messages).
func (m *Manager) Live() []*Keys {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(m.cfg.Clock())
	return append([]*Keys(nil), m.keys...)
}

// Sweep wipes and forgets expired keys.
func (m *Manager) Sweep() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(m.cfg.Clock())
}

func (m *Manager) sweepLocked(now time.Time) {
	kept := m.keys[:0]
	for _, k := range m.keys {
		if now.Before(k.notAfter) {
			kept = append(kept, k)
			continue
		}
		k.Wipe()
		m.cfg.Logger.Info("expired delegation keys wiped", "not_after", k.notAfter.UTC().Format(time.RFC3339))
	}
	clear(m.keys[len(kept):])
	m.keys = kept
}

// SetIdentity switches to a new identity key and state (after a rotation) and issues a delegation under
// it at once. Keys under the old generation are wiped: peers refuse them now anyway.
func (m *Manager) SetIdentity(ctx context.Context, signer keystore.Signer, st identity.State) (*Keys, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !signer.Public().Equal(st.Current) {
		return nil, fmt.Errorf("delegation manager: the signer is not the current key of generation %d", st.Generation)
	}
	old := m.cfg
	m.cfg.Identity, m.cfg.State = signer, st
	k, err := m.renewLocked(ctx)
	if err != nil {
		m.cfg = old
		return nil, err
	}
	for _, o := range m.keys[1:] {
		o.Wipe()
	}
	clear(m.keys[1:])
	m.keys = m.keys[:1]
	return k, nil
}

// Run renews delegations before they expire and wipes expired keys until ctx ends; then it wipes
// everything. A failed renewal is logged and retried every minute.
func (m *Manager) Run(ctx context.Context) error {
	defer m.Close()
	for {
		m.mu.Lock()
		wait := time.Minute
		if len(m.keys) > 0 {
			wait = m.keys[0].notAfter.Add(-m.cfg.RenewBefore).Sub(m.cfg.Clock())
			if len(m.keys) > 1 {
				wait = min(wait, m.keys[len(m.keys)-1].notAfter.Sub(m.cfg.Clock()))
			}
		}
		m.mu.Unlock()
		t := time.NewTimer(max(wait, time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if _, err := m.Current(ctx); err != nil {
			m.cfg.Logger.Error("delegation renewal failed", "err", err)
		}
	}
}

// Close wipes every key the manager holds.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range m.keys {
		k.Wipe()
	}
	m.keys = nil
}
