package config

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"time"

	"github.com/custos-agent/custos/agent/rbac"
)

// GatewayConfig is the `gateway:` section: the HTTP API (agent/gateway) for programs that are not agents.
// With Listen empty (the default) the agent serves no gateway; the API keys still exist (agentctl gateway
// key) so that they can be made before it is enabled.
type GatewayConfig struct {
	// Listen is host:port. A non-loopback host requires TLS (TLS 1.3 only).
	Listen string `yaml:"listen"`
	// TLS serves HTTPS with the certificate and key in these files (PEM). On a loopback address it is
	// optional.
	TLS GatewayTLS `yaml:"tls"`
	// MaxBodyBytes bounds a request body (413 above it); default 1 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxHeaderBytes bounds the request line and headers; default 16 KiB.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxStreams bounds the open event streams (GET /v1/tasks/{id}/events); default 64.
	MaxStreams int `yaml:"max_streams"`
	// KeyRate is the default requests per second of an API key (a key may set its own); default 20. The
	// burst is twice the rate.
	KeyRate float64 `yaml:"key_rate"`
	// AddressRate is the requests per second of one client address, whatever key it uses; default 50,
	// burst twice that.
	AddressRate float64 `yaml:"address_rate"`
	// Mailbox bounds the store-and-forward mailbox (ADR 0093); it applies whether or not the gateway
	// listens (the recipient side keeps what it received under the same retention).
	Mailbox GatewayMailbox `yaml:"mailbox"`
}

// GatewayMailbox bounds the mailbox. Zero fields take agent/mailbox's defaults.
type GatewayMailbox struct {
	// MaxMessageBytes bounds one message's plaintext (413 above it); default 64 KiB, at most 1 MiB.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// PerRecipient and Total bound the messages waiting (429 mailbox_full); defaults 100 and 10000.
	PerRecipient int `yaml:"per_recipient"`
	Total        int `yaml:"total"`
	// Retention is how long an undelivered message waits (and how long a recipient remembers the IDs it
	// accepted); default 168h, at least 1m.
	Retention time.Duration `yaml:"retention"`
}

// GatewayTLS is the gateway's certificate, and optionally the client certificates it requires.
type GatewayTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// BindAgentID, instead of the files, serves a self-signed Ed25519 certificate carrying a binding signed
	// by the agent's operational key (the transports' binding, ADR 0016, in the same certificate extension):
	// a client that knows the agent ID verifies the gateway without a CA. Exclusive with cert_file/key_file.
	BindAgentID bool `yaml:"bind_agent_id"`
	// ClientFingerprints, when set, require mutual TLS: a client certificate whose SHA-256 (hex, of the
	// DER) is one of these.
	ClientFingerprints []string `yaml:"client_fingerprints"`
}

// Defaults of the gateway section.
const (
	DefaultGatewayMaxBody    = 1 << 20
	DefaultGatewayMaxHeader  = 16 << 10
	DefaultGatewayMaxStreams = 64
	DefaultGatewayKeyRate    = 20
	DefaultGatewayAddrRate   = 50
)

// Enabled reports whether the agent serves the gateway.
func (g GatewayConfig) Enabled() bool { return g.Listen != "" }

// UseTLS reports whether the gateway serves HTTPS.
func (g GatewayConfig) UseTLS() bool { return g.TLS.CertFile != "" || g.TLS.BindAgentID }

func (g *GatewayConfig) applyDefaults() {
	if g.MaxBodyBytes == 0 {
		g.MaxBodyBytes = DefaultGatewayMaxBody
	}
	if g.MaxHeaderBytes == 0 {
		g.MaxHeaderBytes = DefaultGatewayMaxHeader
	}
	if g.MaxStreams == 0 {
		g.MaxStreams = DefaultGatewayMaxStreams
	}
	if g.KeyRate == 0 {
		g.KeyRate = DefaultGatewayKeyRate
	}
	if g.AddressRate == 0 {
		g.AddressRate = DefaultGatewayAddrRate
	}
}

var fingerprint = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (g *GatewayConfig) validate() error {
	switch {
	case g.MaxBodyBytes < 1024 || g.MaxBodyBytes > 64<<20:
		return fmt.Errorf("gateway.max_body_bytes: %d is outside 1024..%d", g.MaxBodyBytes, 64<<20)
	case g.MaxHeaderBytes < 1024 || g.MaxHeaderBytes > 1<<20:
		return fmt.Errorf("gateway.max_header_bytes: %d is outside 1024..%d", g.MaxHeaderBytes, 1<<20)
	case g.MaxStreams < 1 || g.MaxStreams > 10000:
		return fmt.Errorf("gateway.max_streams: %d is outside 1..10000", g.MaxStreams)
	case !(g.KeyRate > 0 && g.KeyRate <= 100000):
		return fmt.Errorf("gateway.key_rate: %v is outside (0, 100000]", g.KeyRate)
	case !(g.AddressRate > 0 && g.AddressRate <= 100000):
		return fmt.Errorf("gateway.address_rate: %v is outside (0, 100000]", g.AddressRate)
	case g.Mailbox.MaxMessageBytes < 0 || g.Mailbox.MaxMessageBytes > 1<<20:
		return fmt.Errorf("gateway.mailbox.max_message_bytes: %d is outside 0..%d (0: the default, 64 KiB)", g.Mailbox.MaxMessageBytes, 1<<20)
	case g.Mailbox.PerRecipient < 0 || g.Mailbox.Total < 0 || g.Mailbox.Total > 1_000_000 || g.Mailbox.PerRecipient > cmp.Or(g.Mailbox.Total, 10_000):
		return fmt.Errorf("gateway.mailbox: per_recipient %d and total %d must be 0 (the defaults) or positive, total at most 1000000, per_recipient at most total", g.Mailbox.PerRecipient, g.Mailbox.Total)
	case g.Mailbox.Retention != 0 && g.Mailbox.Retention < time.Minute:
		return fmt.Errorf("gateway.mailbox.retention: %s is under 1m (0: the default, 168h)", g.Mailbox.Retention)
	case (g.TLS.CertFile == "") != (g.TLS.KeyFile == ""):
		return fmt.Errorf("gateway.tls: cert_file and key_file go together")
	case g.TLS.BindAgentID && g.TLS.CertFile != "":
		return fmt.Errorf("gateway.tls: bind_agent_id and cert_file/key_file are exclusive: the certificate comes from the files or is bound to the agent ID, set one")
	}
	for _, f := range []string{g.TLS.CertFile, g.TLS.KeyFile} {
		if f != "" && (!filepath.IsAbs(f) || filepath.Clean(f) != f) {
			return fmt.Errorf("gateway.tls: %q must be a clean absolute path", f)
		}
	}
	for i, fp := range g.TLS.ClientFingerprints {
		if !fingerprint.MatchString(fp) {
			return fmt.Errorf("gateway.tls.client_fingerprints[%d]: want the 64-character lowercase hex SHA-256 of a client certificate (DER)", i)
		}
	}
	if len(g.TLS.ClientFingerprints) > 0 && !g.UseTLS() {
		return fmt.Errorf("gateway.tls.client_fingerprints: client certificates need TLS: set gateway.tls.cert_file and key_file, or bind_agent_id")
	}
	if g.Listen == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(g.Listen)
	if err != nil || port == "" {
		return fmt.Errorf("gateway.listen: %q is not host:port", g.Listen)
	}
	if !g.UseTLS() && !loopbackHost(host) {
		return fmt.Errorf("gateway.listen: %s is not a loopback address, and the gateway serves other hosts only over TLS 1.3: set gateway.tls.cert_file and key_file, or gateway.tls.bind_agent_id: true (or listen on 127.0.0.1)", g.Listen)
	}
	return nil
}

// loopbackHost reports whether host names only the loopback interface.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// GatewayRoles is the role table the gateway's keys take their permissions from (authorization.roles_file,
// else the seed's).
func (c *Config) GatewayRoles() (*rbac.Roles, error) { return c.rolesTable() }
