// Package gateway is the agent's HTTP API for programs that are not agents (issue 15, ADR 0073): versioned
// JSON endpoints under /v1 on the standard library's router, API keys bound to the seed's roles (stored
// hashed in the state database, Keys), rate limits per key and per client address (agent/policy's token
// buckets), limits on bodies, headers and open event streams, RFC 9457 problem responses whose type is the
// reason code (reason/registry.go), an audit record and metrics for every call, and the OpenAPI 3.1
// description (docs/openapi.yaml) at /v1/openapi.json.
//
// The gateway is another front of the control operations: it calls the same handlers as the control
// socket (Ops, HandlerOps) under the agent's own authority, after checking its client's key itself.
package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/docs"
)

// Request is the audit event type of a gateway call. Actor: "key:NAME" (never the token), or
// "anonymous"; Subject: the route ("POST /v1/tasks"); Details: status, reason, remote, path.
const Request audit.EventType = "gateway.request"

// AuditFunc writes one audit record (the daemon's record method).
type AuditFunc func(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any)

// Options are what New needs.
type Options struct {
	Config config.GatewayConfig
	// AgentID is this agent's ID (healthz).
	AgentID string
	Ops     Ops
	Keys    *Keys
	// Mailbox, when set, serves POST /v1/agents/{id}/messages and GET /v1/messages (ADR 0093).
	Mailbox Mailbox
	// Roles gives each role its permissions (the agent's authorization.roles_file, or the seed's).
	Roles *rbac.Roles
	Audit AuditFunc
	// Metrics, when set, receives the gateway's collectors.
	Metrics prometheus.Registerer
	Logger  *slog.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Binder signs the binding of the gateway's TLS key (gateway.tls.bind_agent_id; bound.go): the agent's
	// binding authority, the one that binds the transports' keys.
	Binder Binder
}

// Server is a running gateway.
type Server struct {
	opts    Options
	cfg     config.GatewayConfig
	log     *slog.Logger
	now     func() time.Time
	spec    []byte // the OpenAPI document as JSON
	keyRate *limiter
	addrRL  *limiter
	streams atomic.Int64
	reqs    *prometheus.CounterVec
	dur     *prometheus.HistogramVec
	open    prometheus.Gauge
	mux     *http.ServeMux
	srv     *http.Server
	ln      net.Listener
	done    chan struct{}
	bound   *boundCert        // gateway.tls.bind_agent_id
	pin     *x509.Certificate // the served certificate (its key's pin: Pin)
}

// New builds the gateway (it does not listen: Start does).
func New(opts Options) (*Server, error) {
	if opts.Ops == nil || opts.Keys == nil || opts.Audit == nil {
		return nil, errors.New("gateway: Ops, Keys and Audit are required")
	}
	if opts.Roles == nil {
		opts.Roles = rbac.SeedRoles()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	spec, err := SpecJSON()
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, cfg: opts.Config, log: opts.Logger, now: opts.Now, spec: spec,
		keyRate: newLimiter(MaxKeys), addrRL: newLimiter(100000), done: make(chan struct{}),
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "custos_gateway_requests_total",
			Help: "HTTP gateway requests by route and status code."}, []string{"route", "status"}),
		dur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "custos_gateway_request_seconds",
			Help: "HTTP gateway request durations by route (event streams excluded).", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9)}, []string{"route"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{Name: "custos_gateway_event_streams", Help: "Open event streams."}),
	}
	if opts.Metrics != nil {
		for _, c := range []prometheus.Collector{s.reqs, s.dur, s.open} {
			if err := opts.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("gateway metrics: %w", err)
			}
		}
	}
	if opts.Config.TLS.BindAgentID {
		if s.bound, err = newBoundCert(opts.Binder, opts.Now); err != nil {
			return nil, err
		}
	}
	s.routes()
	return s, nil
}

// SpecJSON is docs/openapi.yaml as JSON (what GET /v1/openapi.json serves).
func SpecJSON() ([]byte, error) {
	var v any
	if err := yaml.Unmarshal(docs.OpenAPI(), &v); err != nil {
		return nil, fmt.Errorf("gateway: docs/openapi.yaml: %w", err)
	}
	return json.Marshal(v)
}

// Handler is the gateway's HTTP handler (tests serve it on their own listener).
func (s *Server) Handler() http.Handler { return s.mux }

// Start listens on the configured address (TLS 1.3 when configured) and serves until Close.
func (s *Server) Start(ctx context.Context) error {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("gateway: listen on %s: %w", s.cfg.Listen, err)
	}
	s.srv = &http.Server{Handler: s.mux, MaxHeaderBytes: s.cfg.MaxHeaderBytes, ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	if s.cfg.UseTLS() {
		tc, err := s.TLSConfig(ctx)
		if err != nil {
			_ = ln.Close()
			return err
		}
		s.srv.TLSConfig = tc
		ln = tls.NewListener(ln, tc)
	}
	s.ln = ln
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("gateway stopped", "err", err)
		}
	}()
	s.log.Info("gateway listening", "address", ln.Addr().String(), "tls", s.cfg.UseTLS(), "pin_sha256", s.Pin())
	return nil
}

// Pin is the base64 SHA-256 of the SubjectPublicKeyInfo of the certificate the gateway serves ("" without
// TLS, or before Start).
func (s *Server) Pin() string {
	if s.pin == nil {
		return ""
	}
	return Pin(s.pin)
}

// TLSConfig is the gateway's server TLS configuration (tests serve it on their own listener); Start uses
// it when TLS is configured.
func (s *Server) TLSConfig(ctx context.Context) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS13}
	if s.bound != nil { // first certificate now: a bad binding authority fails the start, not the first client
		cert, err := s.bound.get(ctx)
		if err != nil {
			return nil, err
		}
		s.pin = cert.Leaf
		tc.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return s.bound.get(h.Context()) }
	} else {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLS.CertFile, s.cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("gateway: certificate: %w", err)
		}
		s.pin = cert.Leaf
		tc.Certificates = []tls.Certificate{cert}
	}
	if pins := s.cfg.TLS.ClientFingerprints; len(pins) > 0 {
		want := make([][]byte, 0, len(pins))
		for _, p := range pins {
			b, err := hex.DecodeString(p)
			if err != nil {
				return nil, err
			}
			want = append(want, b)
		}
		tc.ClientAuth = tls.RequireAnyClientCert
		tc.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("gateway: a client certificate is required")
			}
			sum := sha256.Sum256(raw[0])
			ok := 0
			for _, w := range want {
				ok |= subtle.ConstantTimeCompare(sum[:], w)
			}
			if ok != 1 {
				return errors.New("gateway: the client certificate is not one of gateway.tls.client_fingerprints")
			}
			return nil
		}
	}
	return tc, nil
}

// Addr is the address the gateway listens on ("" before Start).
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Close stops the gateway: no new requests; open requests and streams end by ctx's deadline.
func (s *Server) Close(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	<-s.done
	return err
}
