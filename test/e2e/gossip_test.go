package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	golibp2p "github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/discovery"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/host"
)

// grantState is how a judges the grant id that peer presented ("" when it does not know it).
func (a *agent) grantState(id string) string {
	var gl api.GrantsList
	a.ctlJSON(&gl, "grant", "list")
	for _, g := range gl.Peers {
		if g.ID == id {
			return g.State
		}
	}
	return ""
}

func (a *agent) holds(id string) bool {
	var gl api.GrantsList
	a.ctlJSON(&gl, "grant", "list")
	for _, g := range gl.Held {
		if g.ID == id {
			return true
		}
	}
	return false
}

// TestGossipRevocation (issue 14, ADR 0091): six agents with libp2p transports, each given only the
// administrator's /p2p/ address. A submitter holds an administrator-signed grant and runs tasks at four
// executors. The administrator revokes the grant (agentctl revoke, nothing installed by hand): every
// executor refuses the grant (grant_revoked) and the holder drops it, through gossipsub alone; the time
// until every agent enforced it is logged. Then a forged revocation (the genuine one with another
// signature), published with the libp2p key of one executor (stopped first, so the others know its peer
// ID from its verified agent record), is refused by every agent's host (the metric of rejected gossip),
// never applied, and its sender is scored down: gossipsub score (the plugin's log) and reputation.
func TestGossipRevocation(t *testing.T) {
	needPlugin(t, "libp2p")
	admin := newAgent(t, "admin", false)
	admins := "authorization: {admins: [" + admin.id + "]}\n"
	admin.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins})
	admin.start()
	bootAddr := admin.dialAddr("libp2p")
	sub := newAgent(t, "submitter", false)
	execs := make([]*agent, 4)
	for i := range execs {
		execs[i] = newAgent(t, fmt.Sprintf("x%d", i), false)
	}
	all := append([]*agent{sub}, execs...)
	for _, a := range all {
		a.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins,
			Bootstrap: []config.PeerConfig{{ID: admin.id, Transport: "libp2p", Address: bootAddr}}})
		a.startProcess()
	}
	for _, a := range all {
		eventually(t, 30*time.Second, a.name+" running", func() bool { _, _, code := a.run2("status"); return code == 0 })
	}
	for _, x := range execs {
		if out, code := sub.run("peers", "connect", x.dialAddr("libp2p"), "--id", x.id, "--transport", "libp2p"); code != 0 {
			t.Fatalf("connect to %s: %s", x.name, out)
		}
	}
	f, g := issueGrant(t, admin, sub, "task_submitter", "1h", "g.json")
	if out, code := sub.run("grant", "install", f); code != 0 {
		t.Fatalf("grant install: %s", out)
	}
	for _, x := range execs {
		if code, stderr := submitEcho(t, sub, x, "granted"); code != 0 {
			t.Fatalf("submit to %s with the grant: exit %d\n%s", x.name, code, stderr)
		}
	}

	// The revocation, issued at the administrator only.
	start := time.Now()
	if _, stderr, code := admin.run2("revoke", "--grant", f, "--out", filepath.Join(admin.home, "g.revocation")); code != 0 {
		t.Fatalf("revoke: exit %d\n%s", code, stderr)
	}
	issued := time.Since(start)
	pending := map[*agent]bool{sub: true}
	for _, x := range execs {
		pending[x] = true
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(pending) > 0 {
		for a := range pending {
			if (a == sub && !sub.holds(g.ID)) || (a != sub && a.grantState(g.ID) == "grant_revoked") {
				delete(pending, a)
			}
		}
		if time.Now().After(deadline) {
			var names []string
			for a := range pending {
				names = append(names, a.name+":\n"+grepLines(scrape(t, a.status().Metrics), "custos_gossip")+"\n"+grepLines(a.logText(), "gossip"))
			}
			t.Fatalf("the revocation did not reach: %s\nadministrator's log:\n%s", strings.Join(names, "\n"), grepLines(scrape(t, admin.status().Metrics), "custos_gossip")+"\n"+grepLines(admin.logText(), "gossip"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("revocation enforced at all %d other agents %.0f ms after agentctl revoke started (the command itself took %.0f ms; polling every 20 ms)",
		len(all), float64(time.Since(start).Microseconds())/1000, float64(issued.Microseconds())/1000)
	for _, x := range execs {
		code, stderr := submitEcho(t, sub, x, "revoked")
		if code != 1 || !strings.Contains(stderr, "grant_revoked") && !strings.Contains(stderr, "no_grant") {
			t.Fatalf("submit to %s after the revocation: exit %d, want 1 with grant_revoked or no_grant\n%s", x.name, code, stderr)
		}
	}

	// A forged revocation sent with the libp2p key of executor 3 (its verified record maps the key's
	// peer ID to it at every agent that looked it up).
	rogue := execs[3]
	for _, a := range append([]*agent{admin, sub}, execs[:3]...) {
		eventually(t, 30*time.Second, a.name+" finds "+rogue.name+"'s record", func() bool {
			r, ok := a.find(rogue.id)
			return ok && r.PeerID != ""
		})
	}
	rogue.signal(syscall.SIGTERM)
	if code := rogue.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("%s exit %d", rogue.name, code)
	}
	key, err := host.LoadTransportKey(filepath.Join(rogue.home, "transport-keys", "libp2p.key"))
	if err != nil {
		t.Fatal(err)
	}
	sk, err := crypto.UnmarshalEd25519PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := golibp2p.New(golibp2p.Identity(sk), golibp2p.NoListenAddrs, golibp2p.Transport(tcp.NewTCPTransport),
		golibp2p.Security(noise.ID, noise.New), golibp2p.Muxer(yamux.ID, yamux.DefaultTransport), golibp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ps, err := pubsub.NewGossipSub(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(transports.TopicRevocations)
	if err != nil {
		t.Fatal(err)
	}
	targets := append([]*agent{admin, sub}, execs[:3]...)
	for _, a := range targets {
		ai, err := peer.AddrInfoFromString(a.dialAddr("libp2p"))
		if err != nil {
			t.Fatal(err)
		}
		if err := raw.Connect(ctx, *ai); err != nil {
			t.Fatalf("connect to %s: %v", a.name, err)
		}
	}
	eventually(t, 20*time.Second, "the forger sees every agent in the topic", func() bool { return len(topic.ListPeers()) >= len(targets) })
	genuine, err := os.ReadFile(filepath.Join(admin.home, "g.revocation"))
	if err != nil {
		t.Fatal(err)
	}
	rev, err := rbac.DecodeRevocation([]byte(strings.TrimSpace(string(genuine))))
	if err != nil {
		t.Fatal(err)
	}
	if rev.Sig[0] == 'A' { // another signature of the same length
		rev.Sig = "B" + rev.Sig[1:]
	} else {
		rev.Sig = "A" + rev.Sig[1:]
	}
	forged, err := discovery.EncodeRevocationMessage(rev, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := topic.Publish(ctx, forged); err != nil {
		t.Fatal(err)
	}
	const rejected = `custos_gossip_messages_total{topic="/custos/v1/revocations",verdict="reject:grant_bad_signature"}`
	for _, a := range targets {
		eventually(t, 20*time.Second, a.name+" rejects the forged revocation", func() bool {
			return strings.Contains(scrape(t, a.status().Metrics), rejected)
		})
		eventually(t, 20*time.Second, a.name+"'s plugin scores the forger down", func() bool {
			return strings.Contains(a.logText(), "gossip peer scored down") && strings.Contains(a.logText(), raw.ID().String())
		})
		var ps []api.PeerStatus
		a.ctlJSON(&ps, "peers")
		found := false
		for _, p := range ps {
			if p.ID == rogue.id && p.Reputation != nil {
				found = true
				if p.Reputation.Integrity >= 1 {
					t.Errorf("%s: the forger %s keeps full integrity: %+v", a.name, rogue.name, p.Reputation)
				}
			}
		}
		if !found {
			t.Errorf("%s has no reputation record of the forger %s", a.name, rogue.name)
		}
	}
}
