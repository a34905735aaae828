package gateway_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/gateway"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/transports/host/hosttest"
)

// boundServer serves a gateway with gateway.tls.bind_agent_id on a loopback TLS listener, its binding
// signed by authority; the gateway's clock is *now.
func boundServer(t *testing.T, authority gateway.Binder, now func() time.Time) (*gateway.Server, string) {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	keys, err := gateway.NewKeys(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.ParseConfig([]byte("gateway: {listen: \"0.0.0.0:0\", tls: {bind_agent_id: true}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := gateway.New(gateway.Options{Config: cfg.Gateway, AgentID: "self", Ops: &fakeOps{}, Keys: keys, Binder: authority, Now: now,
		Audit: func(audit.EventType, string, string, audit.Outcome, map[string]any) {}})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := s.TLSConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(tls.NewListener(ln, tc)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s, "https://" + ln.Addr().String()
}

// get calls GET /v1/healthz with tc and returns the certificate the gateway presented.
func get(url string, tc *tls.Config) (*tls.ConnectionState, error) {
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := cl.Get(url + "/v1/healthz")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/healthz: %s", resp.Status)
	}
	return resp.TLS, nil
}

// TestBoundCertificate: with gateway.tls.bind_agent_id, a client that knows the agent ID verifies the
// gateway without a CA (the binding in the certificate, signed for that agent), and so does a client that
// pins the key; another agent's ID, another agent's binding, and a wrong pin are refused.
func TestBoundCertificate(t *testing.T) {
	self, err := hosttest.NewIdentityAuthority(hosttest.NewSigner(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := hosttest.NewIdentityAuthority(hosttest.NewSigner(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s, url := boundServer(t, self, time.Now)
	_, urlOther := boundServer(t, other, time.Now)
	if s.Pin() == "" {
		t.Fatal("no pin")
	}
	for _, tc := range []struct {
		name string
		url  string
		tls  *tls.Config
		ok   bool
	}{
		{"the agent's ID", url, gateway.ClientTLSConfig(self.AgentID(), self), true},
		{"another agent's ID", url, gateway.ClientTLSConfig(other.AgentID(), self), false},
		{"another agent's gateway", urlOther, gateway.ClientTLSConfig(self.AgentID(), self), false},
		{"the pin", url, gateway.PinnedTLSConfig(s.Pin()), true},
		{"a wrong pin", urlOther, gateway.PinnedTLSConfig(s.Pin()), false},
		{"a CA-verifying client", url, &tls.Config{MinVersion: tls.VersionTLS13}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := get(tc.url, tc.tls)
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// TestBoundCertificateRenewal: once two thirds of the certificate's lifetime have passed, the gateway
// re-binds its key: a new certificate (another binding), the same key and so the same pin.
func TestBoundCertificateRenewal(t *testing.T) {
	self, err := hosttest.NewIdentityAuthority(hosttest.NewSigner(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	skew := time.Duration(0)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return time.Now().Add(skew) }
	s, url := boundServer(t, self, now)
	verify := gateway.ClientTLSConfig(self.AgentID(), self)
	first, err := get(url, verify)
	if err != nil {
		t.Fatal(err)
	}
	again, err := get(url, verify)
	if err != nil {
		t.Fatal(err)
	}
	if !again.PeerCertificates[0].Equal(first.PeerCertificates[0]) {
		t.Fatal("certificate renewed before it was due")
	}
	mu.Lock()
	skew = 41 * time.Minute
	mu.Unlock()
	renewed, err := get(url, verify)
	if err != nil {
		t.Fatal(err)
	}
	if renewed.PeerCertificates[0].Equal(first.PeerCertificates[0]) {
		t.Fatal("certificate not renewed after two thirds of its lifetime")
	}
	if gateway.Pin(renewed.PeerCertificates[0]) != s.Pin() {
		t.Fatal("renewal changed the key (and the pin)")
	}
}
