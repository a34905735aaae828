package authz

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// TestInstallGossipRevocation (ADR 0091): a revocation received by gossip is verified completely before
// it is applied: a forged one (signature changed) is rejected with grant_bad_signature, before and
// after the genuine one was installed (a copy of a known revocation is verified again, as the plugin
// forwards what is accepted); one signed by an agent that is not an administrator here is ignored
// (not the sender's fault); a holder that does not list the issuer as administrator drops its grant.
func TestInstallGossipRevocation(t *testing.T) {
	ctx := context.Background()
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	stranger := agenttest.NewIdentity(t, keystore.Ed25519)
	f := newFixture(t, "authorization: {admins: ["+admin.ID().String()+"]}\n")
	grant := identity.Base64().EncodeToString(bytes.Repeat([]byte{7}, 16))
	r, err := rbac.IssueRevocation(ctx, admin.Current(), admin.ID(), grant, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forged := r
	forged.Sig = identity.Base64().EncodeToString(bytes.Repeat([]byte{1}, 64))
	check := func(what string, r rbac.Revocation, wantIgnore bool, want reason.Code) {
		t.Helper()
		ignore, err := f.z.InstallGossipRevocation(ctx, r, nil, "gossip")
		if ignore != wantIgnore || reason.Of(err) != want && !(want == "" && err == nil) {
			t.Fatalf("%s: ignore=%v err=%v (code %q), want ignore=%v code %q", what, ignore, err, reason.Of(err), wantIgnore, want)
		}
	}
	check("forged", forged, false, reason.GrantBadSignature)
	if f.z.RBAC().Revoked(grant) {
		t.Fatal("a forged revocation was applied")
	}
	check("genuine", r, false, "")
	if !f.z.RBAC().Revoked(grant) {
		t.Fatal("the genuine revocation was not applied")
	}
	if !f.audit(t, audit.GrantRevoked, func(e audit.Entry) bool {
		return e.Subject == grant && e.Details["reason"] == "revocation received by gossip"
	}) {
		t.Fatal("no grant.revoked audit record for the gossiped revocation")
	}
	// One caught up with (ADR 0096) says so, and from whom.
	grant2 := identity.Base64().EncodeToString(bytes.Repeat([]byte{8}, 16))
	r2, err := rbac.IssueRevocation(ctx, admin.Current(), admin.ID(), grant2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	via := "catch-up from " + stranger.ID().String()
	if _, err := f.z.InstallGossipRevocation(ctx, r2, nil, via); err != nil {
		t.Fatal(err)
	}
	if !f.audit(t, audit.GrantRevoked, func(e audit.Entry) bool {
		return e.Subject == grant2 && e.Details["reason"] == "revocation received by "+via
	}) {
		t.Fatal("the caught-up revocation's audit record does not say it came by catch-up, and from whom")
	}
	check("forged copy of a known revocation", forged, false, reason.GrantBadSignature)
	other, err := rbac.IssueRevocation(ctx, stranger.Current(), stranger.ID(), grant, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	check("not an administrator here", other, true, reason.GossipNotForUs)

	// A holder of the grant that does not list its issuer as an administrator drops it.
	h := newFixture(t, "authorization: {}\n")
	if err := h.held.Put(rbac.Grant{ID: grant, Issuer: admin.ID().String(), Subject: h.self.ID().String()}); err != nil {
		t.Fatal(err)
	}
	if ignore, err := h.z.InstallGossipRevocation(ctx, forged, nil, "gossip"); ignore || reason.Of(err) != reason.GrantBadSignature {
		t.Fatalf("forged revocation of a held grant: ignore=%v err=%v", ignore, err)
	}
	if held, _ := h.held.List(); len(held) != 1 {
		t.Fatal("a forged revocation dropped the held grant")
	}
	if ignore, err := h.z.InstallGossipRevocation(ctx, r, nil, "gossip"); ignore || err != nil {
		t.Fatalf("revocation of a held grant: ignore=%v err=%v", ignore, err)
	}
	if held, _ := h.held.List(); len(held) != 0 {
		t.Fatal("the revoked held grant is still held")
	}
}

// TestCatchupDispatchAndWanted (ADR 0096): a revocation_sync message from a peer with no role reaches
// the catch-up handler once authorized (grants enforced: it needs none); without a handler it is
// refused (unavailable). RevocationWanted wants a revocation by an administrator or by the issuer of a
// held grant, and not one already revoked or signed by anyone else.
func TestCatchupDispatchAndWanted(t *testing.T) {
	ctx := context.Background()
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	stranger := agenttest.NewIdentity(t, keystore.Ed25519)
	peer := agenttest.NewIdentity(t, keystore.Ed25519)
	f := newFixture(t, "authorization: {admins: ["+admin.ID().String()+"]}\n")
	msg := func() *session.Message { return message(envelope.RevocationSync, []byte(`{"v":1,"want":["x"]}`)) }
	if err := f.z.Dispatch(ctx, &session.Peer{ID: peer.ID(), RemoteAddr: "127.0.0.1:7000"}, msg()); reason.Of(err) != reason.Unavailable {
		t.Fatalf("revocation_sync without a handler: %v", err)
	}
	var got []string
	f.z.OnCatchup(func(_ context.Context, p string, payload []byte) error {
		got = append(got, p+" "+string(payload))
		return nil
	})
	if err := f.z.Dispatch(ctx, &session.Peer{ID: peer.ID(), RemoteAddr: "127.0.0.1:7000"}, msg()); err != nil {
		t.Fatalf("revocation_sync from a peer with no role: %v", err)
	}
	if len(got) != 1 || got[0] != peer.ID().String()+` {"v":1,"want":["x"]}` {
		t.Fatalf("handler got %q", got)
	}

	g1 := identity.Base64().EncodeToString(bytes.Repeat([]byte{1}, 16))
	g2 := identity.Base64().EncodeToString(bytes.Repeat([]byte{2}, 16))
	if err := f.held.Put(rbac.Grant{ID: g2, Issuer: stranger.ID().String(), Subject: f.self.ID().String()}); err != nil {
		t.Fatal(err)
	}
	wanted := f.z.RevocationWanted()
	for _, tc := range []struct {
		grant, issuer string
		want          bool
	}{
		{g1, admin.ID().String(), true},
		{g1, stranger.ID().String(), false},
		{g2, stranger.ID().String(), true},
		{g2, peer.ID().String(), false},
		{g1, "not an ID", false},
	} {
		if got := wanted(tc.grant, tc.issuer); got != tc.want {
			t.Errorf("wanted(%s, %s) = %v, want %v", tc.grant, tc.issuer, got, tc.want)
		}
	}
	r, err := rbac.IssueRevocation(ctx, admin.Current(), admin.ID(), g1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.z.InstallGossipRevocation(ctx, r, nil, "gossip"); err != nil {
		t.Fatal(err)
	}
	if f.z.RevocationWanted()(g1, admin.ID().String()) {
		t.Fatal("a revocation already held is wanted")
	}
	if held := f.z.HeldRevocations(10); len(held) != 1 || held[0] != r {
		t.Fatalf("held %v", held)
	}
	if got, ok := f.z.HeldRevocationOf(g1); !ok || got != r {
		t.Fatal("HeldRevocationOf")
	}
}
