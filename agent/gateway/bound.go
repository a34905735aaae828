package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/custos-agent/custos/transports/tlsbind"
)

// BindingName is the transport name in the binding of the gateway's TLS key (gateway.tls.bind_agent_id):
// the binding is the transports' (transports/binding, ADR 0016), signed by the same authority, so a
// gateway binding is never accepted as a transport's and the other way round (agent/config refuses a
// transport plugin named "gateway", whose bindings would otherwise pass for the gateway's).
const BindingName = "gateway"

// Binder signs the binding of a key for the agent: its binding authority (agent/bindauth.Authority, which
// signs with the operational key), the one that binds the transport plugins' keys.
type Binder interface {
	Bind(ctx context.Context, transport string, key ed25519.PublicKey) ([]byte, time.Time, error)
}

// Verifier verifies a binding's proof and returns the agent ID it binds the key to: agent/bindauth's
// Authority for an agent (through the key event log), or a test authority.
type Verifier interface {
	Verify(ctx context.Context, transport string, raw []byte, key ed25519.PublicKey) (string, error)
}

// boundCert is the gateway's certificate under gateway.tls.bind_agent_id: a self-signed certificate over
// an Ed25519 key made when the gateway starts (so its pin holds until the agent restarts), carrying the
// binding in tlsbind's extension, valid as long as the binding (at most bindauth.DefaultBindingTTL), and
// re-signed when two thirds of its lifetime have passed.
type boundCert struct {
	binder Binder
	key    ed25519.PrivateKey
	now    func() time.Time

	mu       sync.Mutex
	cert     *tls.Certificate
	issued   time.Time
	notAfter time.Time
}

func newBoundCert(b Binder, now func() time.Time) (*boundCert, error) {
	if b == nil {
		return nil, errors.New("gateway: gateway.tls.bind_agent_id needs the agent's binding authority (Options.Binder)")
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("gateway: TLS key: %w", err)
	}
	return &boundCert{binder: b, key: key, now: now}, nil
}

// get returns the current certificate, renewing it first when it is due.
func (c *boundCert) get(ctx context.Context) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.cert != nil && now.Before(c.issued.Add(c.notAfter.Sub(c.issued)*2/3)) {
		return c.cert, nil
	}
	raw, notAfter, err := c.binder.Bind(ctx, BindingName, c.key.Public().(ed25519.PublicKey))
	if err == nil {
		var cert *tls.Certificate
		if cert, err = tlsbind.NewCertificate("custos gateway", raw, notAfter, c.key); err == nil {
			c.cert, c.issued, c.notAfter = cert, now, notAfter
			return cert, nil
		}
	}
	if c.cert != nil && now.Before(c.notAfter) {
		return c.cert, nil // still valid: renewal is tried again at the next handshake
	}
	return nil, fmt.Errorf("gateway: bind the TLS key to the agent: %w", err)
}

// Pin is the base64 SHA-256 of cert's SubjectPublicKeyInfo: what a client that only pins compares (the
// gateway logs it at start; examples/python/custos_gateway.py's pin_sha256).
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// ClientTLSConfig is the TLS configuration of a Go client that knows the agent's ID: no CA, the gateway is
// accepted only if its certificate carries a binding of its key that v verifies for agentID
// (gateway.tls.bind_agent_id).
func ClientTLSConfig(agentID string, v Verifier) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13,
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection: the binding is the pin
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyServer(context.Background(), cs, agentID, v)
		}}
}

// VerifyServer checks a gateway's handshake: one self-signed Ed25519 certificate carrying a binding of its
// key (tlsbind.PeerBinding) whose proof v verifies, for agentID.
func VerifyServer(ctx context.Context, cs tls.ConnectionState, agentID string, v Verifier) error {
	raw, key, err := tlsbind.PeerBinding(cs, BindingName)
	if err != nil {
		return fmt.Errorf("gateway certificate: %w", err)
	}
	got, err := v.Verify(ctx, BindingName, raw, key)
	if err != nil {
		return fmt.Errorf("gateway certificate: %w", err)
	}
	if got != agentID {
		return fmt.Errorf("gateway certificate: bound to agent %s, not %s", got, agentID)
	}
	return nil
}

// PinnedTLSConfig is the TLS configuration of a client that only pins: the gateway's certificate key must
// hash (Pin) to pin.
func PinnedTLSConfig(pin string) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13,
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection: the pin
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || subtle.ConstantTimeCompare([]byte(Pin(cs.PeerCertificates[0])), []byte(pin)) != 1 {
				return errors.New("gateway certificate: its key does not match the pinned SHA-256")
			}
			return nil
		}}
}
