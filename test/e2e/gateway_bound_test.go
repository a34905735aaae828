package e2e

import (
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/bindauth"
	"github.com/custos-agent/custos/agent/gateway"
	"github.com/custos-agent/custos/agent/peers"
)

// TestGatewayBoundTLS: with gateway.tls.bind_agent_id the real daemon serves a certificate bound to its
// agent ID by its operational key (agent/bindauth, as the transports' keys): a Go client that knows only
// the agent ID verifies it (key event log and delegation in the binding's proof, no CA), one expecting
// another agent is refused, and the Python example connects with the key's pin (--pin-sha256).
func TestGatewayBoundTLS(t *testing.T) {
	x := newAgent(t, "executor", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	a, base := gatewayConfig(t, map[string]*agent{"tcp": x}, ", tls: {bind_agent_id: true}", "")
	a.start()
	token := gwKey(a, "bound-app", "gateway_service,task_submitter")
	cache, err := peers.Open(filepath.Join(t.TempDir(), "peers.db"))
	if err != nil {
		t.Fatal(err)
	}
	verifier := bindauth.NewVerifier(cache)
	get := func(tc *tls.Config) (*http.Response, error) {
		cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := cl.Get(base + "/v1/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	resp, err := get(gateway.ClientTLSConfig(a.id, verifier))
	if err != nil || resp.StatusCode != 200 || resp.TLS.Version != tls.VersionTLS13 {
		t.Fatalf("client verifying the binding for %s: %v", a.id, err)
	}
	pin := gateway.Pin(resp.TLS.PeerCertificates[0])
	if _, err := get(gateway.ClientTLSConfig(x.id, verifier)); err == nil || !strings.Contains(err.Error(), "not "+x.id) {
		t.Fatalf("client expecting %s: err %v, want a refused handshake", x.id, err)
	}
	if _, err := get(gateway.PinnedTLSConfig(pin)); err != nil {
		t.Fatalf("pinned client: %v", err)
	}
	eventually(t, 20*time.Second, "A's session with the executor", func() bool { return a.sessionWith(x.id) != nil })
	t.Run("python", func(t *testing.T) { gatewayPython(t, base, a, x, token, "--pin-sha256", pin) })
}
