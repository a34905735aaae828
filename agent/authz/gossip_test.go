package authz

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
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
		ignore, err := f.z.InstallGossipRevocation(ctx, r, nil)
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
	if ignore, err := h.z.InstallGossipRevocation(ctx, forged, nil); ignore || reason.Of(err) != reason.GrantBadSignature {
		t.Fatalf("forged revocation of a held grant: ignore=%v err=%v", ignore, err)
	}
	if held, _ := h.held.List(); len(held) != 1 {
		t.Fatal("a forged revocation dropped the held grant")
	}
	if ignore, err := h.z.InstallGossipRevocation(ctx, r, nil); ignore || err != nil {
		t.Fatalf("revocation of a held grant: ignore=%v err=%v", ignore, err)
	}
	if held, _ := h.held.List(); len(held) != 0 {
		t.Fatal("the revoked held grant is still held")
	}
}
