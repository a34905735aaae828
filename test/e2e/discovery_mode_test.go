package e2e

import (
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/audit"
)

// TestDHTModeFromOwnRoles (issue 17, ADR 0094 amendment): answering DHT lookups is the self operation
// self.lookup.answer (discover_peers). An agent with authorization.own_roles: [] and no grant held starts
// its libp2p plugin with the DHT in client mode (status --json: dht_mode client) and audits the refusal;
// the agents with the default own roles ([peer_node]) run it in server mode. The client still asks: it
// finds another agent by ID.
func TestDHTModeFromOwnRoles(t *testing.T) {
	needPlugin(t, "libp2p")
	boot := newAgent(t, "boot", false)
	boot.writeConfig(agentConfig{Transports: []string{"libp2p"}})
	boot.start()
	bootAddr := boot.dialAddr("libp2p")
	viaBoot := []config.PeerConfig{{ID: boot.id, Transport: "libp2p", Address: bootAddr}}
	other := newAgent(t, "other", false)
	other.writeConfig(agentConfig{Transports: []string{"libp2p"}, Bootstrap: viaBoot})
	other.start()
	asker := newAgent(t, "asker", false)
	asker.writeConfig(agentConfig{Transports: []string{"libp2p"}, Bootstrap: viaBoot, Extra: "authorization: {own_roles: []}\n"})
	asker.start()

	for _, c := range []struct {
		a    *agent
		want string
	}{{boot, "server"}, {other, "server"}, {asker, "client"}} {
		if got := c.a.transportStatus("libp2p").DHTMode; got != c.want {
			t.Errorf("%s: dht_mode %q, want %q", c.a.name, got, c.want)
		}
	}
	if !auditHas(t, asker, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Actor == asker.id && e.Subject == "self.lookup.answer" && e.Details["permission"] == "discover_peers" &&
			e.Details["rbac_reason"] == "no_grant"
	}) {
		t.Error("the client-mode agent's audit log has no access.denied record of self.lookup.answer")
	}
	eventually(t, 45*time.Second, "the client-mode agent finds another agent by ID", func() bool {
		_, ok := asker.find(other.id)
		return ok
	})
}
