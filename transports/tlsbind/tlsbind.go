// Package tlsbind is the TLS 1.3 profile the TCP and WebSocket transports share: mutual authentication
// with self-signed certificates over the plugin's Ed25519 transport key, each carrying the host-signed
// transport binding in a private certificate extension (BindingOID). A peer is accepted only if it
// presents exactly one such certificate, correctly self-signed, whose key is the key its binding names.
// Chains, names and CAs play no part: the binding (verified on the host) is the pin. TLS 1.2 and older
// are refused; session resumption is off so every connection presents the current binding.
package tlsbind

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/plugin"
)

// BindingOID identifies the certificate extension holding the transport binding: an OCTET STRING whose
// contents are the encoded binding (transports/binding). The arc 1.3.6.1.4.1.32473 is IANA's example
// enterprise number (RFC 5612), used here as a private placeholder until the project registers its own
// Private Enterprise Number; see docs/adr/0017. The last two arcs: 1 = transport, 1 = binding v1.
var BindingOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 1, 1}

// ErrNoBinding: the peer's certificate carries no (or an unusable) transport binding.
var ErrNoBinding = errors.New("peer certificate carries no valid transport binding")

// Identity makes TLS configurations for a plugin identity, renewing its certificate whenever the host
// installs a new binding.
type Identity struct {
	id *plugin.Identity

	mu   sync.Mutex
	gen  uint64
	cert *tls.Certificate
}

// New wraps a plugin identity.
func New(id *plugin.Identity) *Identity { return &Identity{id: id} }

// Certificate returns the certificate for the current binding.
func (t *Identity) Certificate() (*tls.Certificate, error) {
	raw, b, gen, ok := t.id.Binding()
	if !ok {
		return nil, errors.New("no transport binding installed yet")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cert != nil && t.gen == gen {
		return t.cert, nil
	}
	cert, err := NewCertificate("custos "+t.id.Transport()+" transport", raw, b.NotAfter, t.id.PrivateKey())
	if err != nil {
		return nil, err
	}
	t.cert = cert
	t.gen = gen
	return t.cert, nil
}

// NewCertificate makes the self-signed certificate over priv's key carrying the encoded binding raw in
// the BindingOID extension, valid until notAfter (the binding's expiry): what the transports present, and
// the HTTP gateway when gateway.tls.bind_agent_id is set (agent/gateway).
func NewCertificate(commonName string, raw []byte, notAfter time.Time, priv ed25519.PrivateKey) (*tls.Certificate, error) {
	ext, err := asn1.Marshal(raw)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             time.Now().Add(-5 * time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		ExtraExtensions:       []pkix.Extension{{Id: BindingOID, Value: ext}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return nil, fmt.Errorf("create binding certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}, nil
}

// base is what both sides share.
func (t *Identity) base() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		SessionTicketsDisabled: true,
		// Chains are not verified: the peer's certificate is checked by VerifyConnection below, and its
		// binding by the host.
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection + host-side binding verification
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, _, err := t.Peer(cs)
			return err
		},
	}
}

// ServerConfig requires a client certificate carrying a binding.
func (t *Identity) ServerConfig(alpn ...string) *tls.Config {
	c := t.base()
	c.ClientAuth = tls.RequireAnyClientCert
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return t.Certificate() }
	c.NextProtos = alpn
	return c
}

// ClientConfig presents the binding certificate and checks the server's.
func (t *Identity) ClientConfig(alpn ...string) *tls.Config {
	c := t.base()
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return t.Certificate() }
	c.NextProtos = alpn
	return c
}

// Peer extracts and checks the peer's binding and key from a completed (or verifying) handshake.
func (t *Identity) Peer(cs tls.ConnectionState) ([]byte, ed25519.PublicKey, error) {
	return PeerBinding(cs, t.id.Transport())
}

// PeerBinding checks the peer certificate of cs for transport and returns its binding and key.
func PeerBinding(cs tls.ConnectionState, transport string) ([]byte, ed25519.PublicKey, error) {
	if cs.Version != tls.VersionTLS13 {
		return nil, nil, fmt.Errorf("TLS version %#x refused: TLS 1.3 only", cs.Version)
	}
	if len(cs.PeerCertificates) != 1 {
		return nil, nil, fmt.Errorf("%w: peer presented %d certificates, want exactly 1", ErrNoBinding, len(cs.PeerCertificates))
	}
	cert := cs.PeerCertificates[0]
	key, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("%w: peer certificate key is %T, want Ed25519", ErrNoBinding, cert.PublicKey)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		return nil, nil, fmt.Errorf("%w: peer certificate is not self-signed by its key: %v", ErrNoBinding, err)
	}
	var raw []byte
	found := 0
	for _, e := range cert.Extensions {
		if e.Id.Equal(BindingOID) {
			found++
			rest, err := asn1.Unmarshal(e.Value, &raw)
			if err != nil || len(rest) != 0 {
				return nil, nil, fmt.Errorf("%w: binding extension is not a DER OCTET STRING", ErrNoBinding)
			}
		}
	}
	if found != 1 {
		return nil, nil, fmt.Errorf("%w: %d binding extensions (want 1)", ErrNoBinding, found)
	}
	if len(raw) > transports.MaxBindingSize {
		return nil, nil, fmt.Errorf("%w: binding of %d bytes", ErrNoBinding, len(raw))
	}
	if _, err := binding.CheckFor(raw, transport, key); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNoBinding, err)
	}
	return raw, key, nil
}
