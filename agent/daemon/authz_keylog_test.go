package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/keystore"
)

// TestStolenInceptionKeyGrant (issue 12 finding 5): an administrator rotated away from its inception key;
// a thief of that key signs a system_admin grant dated now. An agent that holds the administrator's key
// event log (authorization.admin_logs) refuses it (issued after generation 0 was rotated away); with
// authorization.require_admin_log and no log, it refuses every grant of that administrator; the grant of
// the current generation is accepted once the log is held. Before the fix the stolen-key grant was
// verified with the inception key and accepted (AddGrant returned nil) whatever the agent knew.
func TestStolenInceptionKeyGrant(t *testing.T) {
	ctx := context.Background()
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	admin.Rotate(t) // generation 1 since Epoch + 1h
	thief := admin.Signers[0]
	subject := agenttest.NewIdentity(t, keystore.Ed25519).ID()
	stolen, err := rbac.IssueGrant(ctx, thief, admin.ID(), subject, rbac.SystemAdmin, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	current, err := rbac.IssueGrantBy(ctx, admin.Current(), rbac.IssuerOf(admin.State), subject, rbac.TaskSubmitter, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(t.TempDir(), "admin-kel.jsonl")
	if err := os.WriteFile(logFile, admin.Log.Encode(), 0o600); err != nil {
		t.Fatal(err)
	}

	// The administrator's log is pinned in the configuration.
	a := startAuthzDaemon(t, "authorization: {admins: ["+admin.ID().String()+"], admin_logs: ["+logFile+"]}\n")
	err = a.d.authz.RBAC().AddGrant(ctx, stolen)
	if rbac.ReasonOf(err) != rbac.GrantBadSignature || !strings.Contains(err.Error(), "after generation 0 was rotated away") {
		t.Fatalf("a grant by the rotated-away inception key, with the log pinned: %v, want grant_bad_signature (rotated away)", err)
	}
	if err := a.d.authz.RBAC().AddGrant(ctx, current); err != nil {
		t.Fatalf("the grant of the current generation: %v", err)
	}

	// No log held, require_admin_log: refused; the same agent without the flag can only fall back to the
	// key the ID names (the residual risk docs/adr/0050 states).
	b := startAuthzDaemon(t, "authorization: {admins: ["+admin.ID().String()+"], require_admin_log: true}\n")
	if err := b.d.authz.RBAC().AddGrant(ctx, stolen); rbac.ReasonOf(err) != rbac.GrantBadSignature || !strings.Contains(err.Error(), "require_admin_log") {
		t.Fatalf("a grant of an administrator whose log is not held, with require_admin_log: %v", err)
	}
	c := startAuthzDaemon(t, "authorization: {admins: ["+admin.ID().String()+"]}\n")
	if err := c.d.authz.RBAC().AddGrant(ctx, current); rbac.ReasonOf(err) != rbac.GrantBadSignature || !strings.Contains(err.Error(), "generation 1") {
		t.Fatalf("a generation-1 grant without the administrator's log: %v, want grant_bad_signature naming generation 1", err)
	}

	// A log that is not of an administrator is a configuration error naming the file.
	other := agenttest.NewIdentity(t, keystore.Ed25519)
	otherFile := filepath.Join(t.TempDir(), "other-kel.jsonl")
	if err := os.WriteFile(otherFile, other.Log.Encode(), 0o600); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, a.cfg, "metrics: {disabled: true}\nauthorization: {admins: ["+admin.ID().String()+"], admin_logs: ["+otherFile+"]}\n")
	if _, err := a.d.Reload(ctx); err == nil || !strings.Contains(err.Error(), "admin_logs[0]") || !strings.Contains(err.Error(), "not in authorization.admins") {
		t.Fatalf("reload with the log of a non-administrator: %v", err)
	}
}

// TestPresentable: a held grant that is void under what this agent knows of its issuer's log (here: signed
// by the rotated-away key after the rotation) is not presented; a grant of the issuer's current generation
// is, with the issuer's key event log attached (generation above 0).
func TestPresentable(t *testing.T) {
	ctx := context.Background()
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	admin.Rotate(t)
	a := startAuthzDaemon(t, "authorization: {}\n")
	if _, err := a.d.peers.UpdateLog(admin.ID(), &admin.Log); err != nil {
		t.Fatal(err)
	}
	void, err := rbac.IssueGrant(ctx, admin.Signers[0], admin.ID(), a.d.id, rbac.TaskSubmitter, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.d.authz.Hold(void); err != nil {
		t.Fatal(err)
	}
	if b := a.d.authz.Presentable(); b != nil {
		t.Fatalf("a void grant is presented: %s", b)
	}
	good, err := rbac.IssueGrantBy(ctx, admin.Current(), rbac.IssuerOf(admin.State), a.d.id, rbac.TaskSubmitter, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.d.authz.Hold(good); err != nil {
		t.Fatal(err)
	}
	p, err := rbac.DecodePresentation(a.d.authz.Presentable())
	if err != nil || len(p.Grants) != 1 || p.Grants[0].ID != good.ID || len(p.Logs) != 1 || string(p.Logs[0]) != string(admin.Log.Encode()) {
		t.Fatalf("presentation: %+v, %v; want the generation-1 grant with its issuer's log", p, err)
	}
}
