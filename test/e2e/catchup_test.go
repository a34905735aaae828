package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// TestRevocationCatchUp (issue 14, ADR 0096): gossipsub does not replay, so an agent that was stopped
// while a revocation was gossiped learns it from a peer when it comes back. Three agents with libp2p
// transports: the administrator A, C, and B (which holds a grant X signed by A and bootstraps to A and
// C: an initiator presents its grants). C learns X when B presents it. C is stopped; A revokes X (gossiped to B, which
// drops it); A is stopped, and the gossip's message cache has expired. C restarts, connects to B only,
// and must judge X revoked within a bounded time: the revocation came by catch-up (C's catch-up metric).
func TestRevocationCatchUp(t *testing.T) {
	needPlugin(t, "libp2p")
	a := newAgent(t, "admin", false)
	admins := "authorization: {admins: [" + a.id + "]}\n"
	a.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins})
	a.start()
	c := newAgent(t, "c", false)
	c.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins})
	c.start()
	b := newAgent(t, "b", false)
	b.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins,
		Bootstrap: []config.PeerConfig{b.bootstrapTo(a, "libp2p"), b.bootstrapTo(c, "libp2p")}})
	b.start()
	eventually(t, 30*time.Second, "c has a session with b", func() bool { return c.sessionWith(b.id) != nil })

	f, g := issueGrant(t, a, b, "task_submitter", "1h", "x.json")
	if out, code := b.run("grant", "install", f); code != 0 {
		t.Fatalf("grant install: %s", out)
	}
	eventually(t, 30*time.Second, "c knows grant X as valid", func() bool { return c.grantState(g.ID) == "valid" })

	c.signal(syscall.SIGTERM)
	if code := c.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("c exit %d", code)
	}
	revoked := time.Now()
	if _, stderr, code := a.run2("revoke", "--grant", f); code != 0 {
		t.Fatalf("revoke: exit %d\n%s", code, stderr)
	}
	eventually(t, 30*time.Second, "b receives the revocation by gossip and drops X", func() bool { return !b.holds(g.ID) })
	a.signal(syscall.SIGTERM)
	if code := a.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("admin exit %d", code)
	}
	// Gossipsub's message cache gossips a message id for 3 heartbeats (1 s each) and keeps it for 5: wait
	// them out, so that only catch-up can bring the revocation to c.
	if d := 6*time.Second - time.Since(revoked); d > 0 {
		time.Sleep(d)
	}

	// c comes back knowing only b (b also re-dials it: whichever session the two keep).
	c.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins,
		Bootstrap: []config.PeerConfig{{ID: b.id, Transport: "libp2p", Address: b.dialAddr("libp2p")}}})
	restart := time.Now()
	c.start()
	eventually(t, 30*time.Second, "c has a session with b again", func() bool { return c.sessionWith(b.id) != nil })
	up := time.Now()
	deadline := up.Add(10 * time.Second) // the bound this test holds catch-up to, from the session
	for c.grantState(g.ID) != "grant_revoked" {
		if time.Now().After(deadline) {
			t.Fatalf("c still judges X %q 10 s after its session with b came up\nc's metrics:\n%s\nc's log:\n%s\nb's log:\n%s",
				c.grantState(g.ID), grepLines(scrape(t, c.status().Metrics), "catchup"), grepLines(c.logText(), "catch"), grepLines(b.logText(), "catch"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("c refuses X %.0f ms after its session with b came up (%.0f ms after agentctl run started; polling every 20 ms)",
		float64(time.Since(up).Microseconds())/1000, float64(time.Since(restart).Microseconds())/1000)
	m := scrape(t, c.status().Metrics)
	if !strings.Contains(m, `custos_revocation_catchup_total{result="accept"} 1`) {
		t.Fatalf("c's catch-up metric does not show the revocation:\n%s", grepLines(m, "catchup"))
	}
}

// TestRevocationCatchUpRefusesForged (ADR 0096): a peer that offers a forged revocation in catch-up (a
// revocation "by" the administrator with a signature it never made, written into the peer's state
// while it was stopped: a daemon does not re-verify what it stored) gets it refused with
// grant_bad_signature by the gossip code, is scored down (reputation), and catch-up from it ends for
// the session: the genuine revocation that follows it in the same batch is not judged.
func TestRevocationCatchUpRefusesForged(t *testing.T) {
	needPlugin(t, "libp2p")
	a := newAgent(t, "admin", false) // no transport: it only signs the genuine revocation
	admins := "authorization: {admins: [" + a.id + "]}\n"
	a.writeConfig(agentConfig{Extra: admins})
	a.start()
	rogue := newAgent(t, "rogue", false)
	rogue.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins})
	rogue.start() // once, to create its state
	rogue.signal(syscall.SIGTERM)
	if code := rogue.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("rogue exit %d", code)
	}
	// A genuine revocation (signed by the administrator), then a forged one issued later (offered first).
	var genuine api.RevokeResult
	g := "ZmFrZWdyYW50MDAwMDAwMA" // 16 bytes
	a.ctlJSON(&genuine, "revoke", g)
	db, err := bolt.Open(filepath.Join(rogue.home, "state.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	st, err := rbac.NewBoltStore(db)
	if err != nil {
		t.Fatal(err)
	}
	forged := rbac.Revocation{Version: rbac.GrantVersion, Grant: "Zm9yZ2VkZ3JhbnQwMDAwMA", Issuer: a.id, Issued: time.Now().Unix() + 10,
		Sig: base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{1}, 64))}
	gr, err := rbac.DecodeRevocation([]byte(genuine.Revocation))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []rbac.Revocation{forged, gr} {
		if err := st.PutRevocation(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	a.signal(syscall.SIGTERM)
	a.waitExit(30 * time.Second)

	rogue.start()
	c := newAgent(t, "c", false)
	c.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins,
		Bootstrap: []config.PeerConfig{c.bootstrapTo(rogue, "libp2p")}})
	c.start()
	const refused = `custos_revocation_catchup_total{result="reject:grant_bad_signature"} 1`
	eventually(t, 30*time.Second, "c refuses the forged revocation", func() bool {
		return strings.Contains(scrape(t, c.status().Metrics), refused)
	})
	eventually(t, 10*time.Second, "c scores the rogue down", func() bool {
		var ps []api.PeerStatus
		c.ctlJSON(&ps, "peers")
		for _, p := range ps {
			if p.ID == rogue.id && p.Reputation != nil && p.Reputation.Integrity < 1 {
				return true
			}
		}
		return false
	})
	if !strings.Contains(c.logText(), "catch-up from peer cut off") {
		t.Fatalf("c did not cut the rogue's catch-up off:\n%s", grepLines(c.logText(), "catch"))
	}
	time.Sleep(time.Second) // anything still in flight arrives
	m := scrape(t, c.status().Metrics)
	if strings.Contains(m, `custos_revocation_catchup_total{result="accept"}`) {
		t.Fatalf("c accepted revocations from a peer it had cut off:\n%s", grepLines(m, "catchup"))
	}
}

// TestRotationNoticeOnGossip (ADR 0097): an administrator X and an agent Y that never hold a session
// with each other (both bootstrap to B only). Y learns X's key event log from X's revocation on gossip
// (its issuer log). X rotates: Y's peer cache moves to X's generation 1 through the rotation notice on
// /custos/v1/key-logs alone, within a bounded time.
func TestRotationNoticeOnGossip(t *testing.T) {
	needPlugin(t, "libp2p")
	b := newAgent(t, "b", false)
	b.writeConfig(agentConfig{Transports: []string{"libp2p"}})
	b.start()
	boot := []config.PeerConfig{{ID: b.id, Transport: "libp2p", Address: b.dialAddr("libp2p")}}
	x := newAgent(t, "x", false)
	admins := "authorization: {admins: [" + x.id + "]}\n"
	x.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins, Bootstrap: boot})
	x.start()
	y := newAgent(t, "y", false)
	y.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins, Bootstrap: boot})
	y.start()
	generation := func() int {
		var ps []api.PeerStatus
		y.ctlJSON(&ps, "peers")
		for _, p := range ps {
			if p.ID == x.id && p.Generation != nil {
				return int(*p.Generation)
			}
		}
		return -1
	}
	// X revokes a grant: Y installs the revocation and learns X's log from it.
	n := 0
	eventually(t, 30*time.Second, "y learns x's key event log from its revocation on gossip", func() bool {
		if generation() == 0 {
			return true
		}
		n++ // another grant each time, until the gossip mesh has formed (a revocation is published once)
		x.run2("revoke", base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{byte(n)}, 16)))
		time.Sleep(200 * time.Millisecond)
		return false
	})
	if y.sessionWith(x.id) != nil {
		t.Fatal("y holds a session with x: the test needs none")
	}
	start := time.Now()
	if out, code := x.run("rotate"); code != 0 || !strings.Contains(out, "to generation 1") {
		t.Fatalf("rotate: exit %d\n%s", code, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for generation() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("y's cache does not hold x's generation 1 (%d)\ny's gossip metrics:\n%s\nb's:\n%s\nx's log:\n%s\ny's log:\n%s", generation(),
				grepLines(scrape(t, y.status().Metrics), "custos_gossip"), grepLines(scrape(t, b.status().Metrics), "custos_gossip"),
				grepLines(x.logText(), "key"), grepLines(y.logText(), "key"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("y holds x's rotated key event log %.0f ms after agentctl rotate started (no session between them)", float64(time.Since(start).Microseconds())/1000)
	if y.sessionWith(x.id) != nil {
		t.Fatal("y holds a session with x")
	}
	if m := scrape(t, y.status().Metrics); !strings.Contains(m, `custos_gossip_messages_total{topic="/custos/v1/key-logs",verdict="accept"}`) {
		t.Fatalf("no key-log gossip accepted at y:\n%s", grepLines(m, "custos_gossip"))
	}
}

// TestRevocationCatchUpAtTheBound (ADR 0096): B holds 5000 revocations signed by an administrator of
// B and C (a key of the test: generation 0, verifiable from its ID alone); C, new, connects to B. B
// offers the newest 4096 (transports.MaxCatchupOffer) and C catches up exactly those, in 16 wants of
// 256, in one session, and publishes none of them on gossip again; the time is logged.
func TestRevocationCatchUpAtTheBound(t *testing.T) {
	needPlugin(t, "libp2p")
	const held, bound = 5000, 4096
	seed := bytes.Repeat([]byte{0x5a}, 32)
	signer, err := keystore.NewMemorySigner(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	admin := identity.NewID(signer.Public())
	admins := "authorization: {admins: [" + admin.String() + "]}\n"
	b := newAgent(t, "b", false)
	b.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins})
	b.start()
	b.signal(syscall.SIGTERM)
	if code := b.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("b exit %d", code)
	}
	db, err := bolt.Open(filepath.Join(b.home, "state.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	st, err := rbac.NewBoltStore(db)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Hour)
	for i := range held {
		g := make([]byte, 16)
		binary.BigEndian.PutUint32(g, uint32(i))
		r, err := rbac.IssueRevocation(context.Background(), signer, admin, base64.RawURLEncoding.EncodeToString(g), base.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.PutRevocation(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	b.start()
	c := newAgent(t, "c", false)
	c.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins, Bootstrap: []config.PeerConfig{c.bootstrapTo(b, "libp2p")}})
	c.start()
	eventually(t, 30*time.Second, "c has a session with b", func() bool { return c.sessionWith(b.id) != nil })
	up := time.Now()
	want := fmt.Sprintf(`custos_revocation_catchup_total{result="accept"} %d`, bound)
	for !strings.Contains(scrape(t, c.status().Metrics), want) {
		if time.Since(up) > 3*time.Minute {
			t.Fatalf("c did not catch up %d revocations:\n%s\n%s", bound, grepLines(scrape(t, c.status().Metrics), "catchup"), grepLines(c.logText(), "catch"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("c caught up %d revocations (of %d held by b) %.1f s after its session with b came up", bound, held, time.Since(up).Seconds())
	time.Sleep(time.Second)
	m := scrape(t, c.status().Metrics)
	if !strings.Contains(m, want+"\n") || strings.Contains(m, `result="refused`) || strings.Contains(m, `result="reject`) {
		t.Fatalf("c's catch-up beyond the bound or refused:\n%s", grepLines(m, "catchup"))
	}
	// What catch-up brought is not republished on gossip (ADR 0096).
	if strings.Contains(m, `custos_gossip_publications_total{result="ok",topic="/custos/v1/revocations"}`) {
		t.Fatalf("c republished caught-up revocations on gossip:\n%s", grepLines(m, "custos_gossip"))
	}
}
