package e2e

import (
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/config"
)

// TestKilledPluginFoundByID (issue 14, "Done means": an agent whose plugin is killed is found again by
// ID within one republish interval, without any config change). Three agents with libp2p transports;
// the victim listens on port 0 and republishes its record every 10 s (discovery.republish_interval,
// shortened for the test). Its plugin is killed with SIGKILL and, while it is down, the test takes its
// TCP port, so the plugin the host restarts listens on a new port (same peer ID: the host keeps the
// libp2p key, ADR 0070): the old address is dead. Another agent, which found the victim before, must
// resolve its ID to the new address and connect by ID alone within one republish interval of the kill.
func TestKilledPluginFoundByID(t *testing.T) {
	needPlugin(t, "libp2p")
	const republish = 10 * time.Second
	boot := newAgent(t, "boot", false)
	boot.writeConfig(agentConfig{Transports: []string{"libp2p"}})
	boot.start()
	bootAddr := boot.dialAddr("libp2p")
	victim := newAgent(t, "victim", false)
	victim.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: fmt.Sprintf("discovery: {republish_interval: %s}\n", republish),
		Bootstrap: []config.PeerConfig{{ID: boot.id, Transport: "libp2p", Address: bootAddr}}})
	// Port 0: a restarted plugin that cannot bind its old port takes a new one.
	raw, err := os.ReadFile(victim.configPath())
	if err != nil {
		t.Fatal(err)
	}
	fixed := victim.listenAddr("libp2p")
	if err := os.WriteFile(victim.configPath(), []byte(strings.Replace(string(raw), fixed, "/ip4/127.0.0.1/tcp/0", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	victim.start()
	finder := newAgent(t, "finder", false)
	finder.writeConfig(agentConfig{Transports: []string{"libp2p"}, Bootstrap: []config.PeerConfig{{ID: boot.id, Transport: "libp2p", Address: bootAddr}}})
	finder.start()

	// The victim's first publications fail until it has a DHT peer (retried with backoff): wait for a
	// successful one, so that only a republication can carry the new address.
	eventually(t, 30*time.Second, "the victim publishes its record", func() bool {
		return strings.Contains(scrape(t, victim.status().Metrics), `custos_discovery_publications_total{result="ok"}`)
	})
	old := victim.dialAddr("libp2p")
	eventually(t, 30*time.Second, "finder finds the victim", func() bool {
		r, ok := finder.find(victim.id)
		return ok && hasAddr(r, old)
	})
	if out, code := finder.run("peers", "connect", "--id", victim.id); code != 0 {
		t.Fatalf("connect by ID before the kill: %s", out)
	}

	// Kill the plugin and hold its port until the host has restarted it elsewhere.
	tr := victim.transportStatus("libp2p")
	port := old[len("/ip4/127.0.0.1/tcp/"):strings.Index(old, "/p2p/")]
	killed := time.Now()
	if err := syscall.Kill(tr.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var hold net.Listener
	for hold == nil && time.Since(killed) < 2*time.Second {
		hold, _ = net.Listen("tcp", "127.0.0.1:"+port)
	}
	if hold == nil {
		t.Fatalf("could not take the killed plugin's port %s", port)
	}
	defer hold.Close()
	eventually(t, 30*time.Second, "the host restarts the plugin", func() bool { return victim.transportStatus("libp2p").Restarts == 1 })
	cur := victim.dialAddr("libp2p")
	if cur == old {
		t.Fatalf("the restarted plugin kept its address %s although its port was taken", old)
	}
	if oldID, curID := old[strings.Index(old, "/p2p/"):], cur[strings.Index(cur, "/p2p/"):]; oldID != curID {
		t.Errorf("the peer ID changed across a plugin restart: %s, then %s (ADR 0070 keeps the key)", oldID, curID)
	}

	deadline := killed.Add(republish)
	var found, connected time.Duration
	for {
		if found == 0 {
			if r, ok := finder.find(victim.id); ok && hasAddr(r, cur) {
				found = time.Since(killed)
			}
		}
		if found != 0 {
			if out, code := finder.run("peers", "connect", "--id", victim.id); code == 0 && finder.sessionWith(victim.id) != nil {
				connected = time.Since(killed)
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("finder resolved the new address after %v but did not connect: %s", found, out)
			}
		}
		if time.Now().After(deadline) {
			r, _ := finder.find(victim.id)
			t.Fatalf("finder did not resolve the victim to its new address %s within one republish interval (%v) of the kill; it finds %+v\nvictim's log:\n%s",
				cur, republish, r.Addrs, grepLines(victim.logText(), "record"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("killed plugin: restarted on a new port, resolved by ID %.1f s and connected %.1f s after the kill (republish interval %v)",
		found.Seconds(), connected.Seconds(), republish)
}
