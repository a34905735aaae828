package e2e

import (
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
)

// find runs agentctl peers find on a for id; ok is false when the lookup failed.
func (a *agent) find(id string) (api.PeerRecord, bool) {
	a.t.Helper()
	out, _, code := a.run2("peers", "find", id, "--timeout", "5s", "--json")
	var r api.PeerRecord
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
		return r, false
	}
	return r, true
}

func hasAddr(r api.PeerRecord, addr string) bool {
	for _, a := range r.Addrs {
		if a.Address == addr {
			return true
		}
	}
	return false
}

// TestDiscoveryNetwork (issue 14, ADR 0070): six agents as separate daemons with libp2p plugins on
// loopback, each given only the first agent's /p2p/ multiaddr, find every other agent by ID through the
// private DHT (peers find prints the addresses of a verified record); an agent connects to another by ID
// alone (peers connect --id), and a bootstrap entry given by ID only is resolved and connected; an
// agent whose plugin is killed is found again; the bootstrap agent's /p2p/ address survives a restart of
// its daemon (the host keeps the libp2p key).
func TestDiscoveryNetwork(t *testing.T) {
	needPlugin(t, "libp2p")
	const n = 6
	agents := make([]*agent, n)
	for i := range agents {
		agents[i] = newAgent(t, fmt.Sprintf("d%d", i), false)
	}
	boot := agents[0]
	boot.writeConfig(agentConfig{Transports: []string{"libp2p"}})
	boot.start()
	bootAddr := boot.dialAddr("libp2p")
	for i, a := range agents[1:] {
		cfg := agentConfig{Transports: []string{"libp2p"}, Bootstrap: []config.PeerConfig{{ID: boot.id, Transport: "libp2p", Address: bootAddr}}}
		if i+1 == n-1 { // the last one also names agent 1 by ID only
			cfg.Bootstrap = append(cfg.Bootstrap, config.PeerConfig{ID: agents[1].id})
		}
		a.writeConfig(cfg)
		a.startProcess()
	}
	for _, a := range agents[1:] {
		eventually(t, 30*time.Second, a.name+" running", func() bool { _, _, code := a.run2("status"); return code == 0 })
	}
	started := time.Now()
	addrs := make([]string, n)
	for i, a := range agents {
		addrs[i] = a.dialAddr("libp2p")
	}
	for i, a := range agents {
		for j, b := range agents {
			if i == j {
				continue
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				r, ok := a.find(b.id)
				if ok && r.AgentID == b.id && hasAddr(r, addrs[j]) {
					break
				}
				if time.Now().After(deadline) {
					out, _ := a.run("peers", "find", b.id, "--timeout", "5s")
					t.Fatalf("%s does not find %s: %s\n%s log:\n%s\n%s log:\n%s", a.name, b.name, out, a.name, a.logTail(), b.name, b.logTail())
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	t.Logf("every agent resolved every other agent's ID %.1f s after the last one started", time.Since(started).Seconds())

	// A bootstrap entry by ID only: the last agent resolved agent 1 and holds a session with it.
	last := agents[n-1]
	eventually(t, 30*time.Second, "the ID-only bootstrap entry connects", func() bool { return last.sessionWith(agents[1].id) != nil })

	// peers connect --id without an address.
	if out, code := agents[2].run("peers", "connect", "--id", agents[3].id); code != 0 {
		t.Fatalf("peers connect --id without an address: exit %d\n%s", code, out)
	}
	if agents[2].sessionWith(agents[3].id) == nil {
		t.Fatal("no session after peers connect --id")
	}
	// An unknown agent: refused with the reason, nothing found.
	stranger := newAgent(t, "stranger", false)
	if out, code := agents[2].run("peers", "find", stranger.id, "--timeout", "2s"); code == 0 {
		t.Errorf("found an agent that never published:\n%s", out)
	}

	// Kill agent 4's plugin: the supervisor restarts it with the same key, and it is found again.
	victim := agents[4]
	tr := victim.transportStatus("libp2p")
	if err := syscall.Kill(tr.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "plugin restarted", func() bool { return victim.transportStatus("libp2p").Restarts == 1 })
	if got := victim.dialAddr("libp2p"); got != addrs[4] {
		t.Errorf("after a plugin restart the libp2p address moved from %s to %s", addrs[4], got)
	}
	eventually(t, 30*time.Second, "the restarted agent is found again", func() bool {
		r, ok := agents[1].find(victim.id)
		return ok && hasAddr(r, addrs[4])
	})

	// The bootstrap agent's daemon restarts: same /p2p/ address (same peer ID), so the configured
	// bootstrap entries stay valid and the others reconnect.
	boot.signal(syscall.SIGTERM)
	if code := boot.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("bootstrap agent exit %d", code)
	}
	boot.start()
	if got := boot.dialAddr("libp2p"); got != bootAddr {
		t.Fatalf("the bootstrap agent's address changed across a daemon restart: %s, was %s", got, bootAddr)
	}
	eventually(t, 30*time.Second, "a peer reconnects to the restarted bootstrap agent at its configured address", func() bool {
		return agents[2].sessionWith(boot.id) != nil
	})
}
