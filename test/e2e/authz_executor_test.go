package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-agent/custos/audit"
)

// TestAuthzExecutorPeerNode: the executor's side of the grant model (docs/adr/0094). An executor
// configured with authorization.own_roles: [] runs a peer's task only while it holds process_tasks
// itself: without a grant, a submitter allowed to submit gets executor_not_permitted (printed by task
// submit --wait, exit 1) and the executor audits access.denied (actor itself, self.task.execute,
// rbac_reason no_grant); with a peer_node grant of its administrator installed on it, the task runs;
// once the grant is revoked there, it refuses again.
func TestAuthzExecutorPeerNode(t *testing.T) {
	admin, x, s := grantTrio(t, ", default_peer_roles: [task_submitter], own_roles: []")

	// 1. The executor holds no peer_node grant.
	code, stderr := submitEcho(t, s, x, "not permitted")
	if code != 1 || !strings.Contains(stderr, "failed: executor_not_permitted") || !strings.Contains(stderr, "process_tasks") {
		t.Fatalf("submit to an executor without process_tasks: exit %d, want 1 with executor_not_permitted\n%s", code, stderr)
	}
	if !auditHas(t, x, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Actor == x.id && e.Subject == "self.task.execute" && e.Details["reason"] == "executor_not_permitted" &&
			e.Details["rbac_reason"] == "no_grant" && e.Details["permission"] == "process_tasks" && e.Details["peer"] == s.id
	}) {
		t.Fatal("the executor's audit log has no access.denied record of the refused execution")
	}

	// 2. A peer_node grant of its administrator, installed on the executor.
	f, g := issueGrant(t, admin, x, "peer_node", "1h", "peer_node.json")
	if out, code := x.run("grant", "install", f); code != 0 || !strings.Contains(out, "installed grant "+g.ID) {
		t.Fatalf("grant install on the executor: exit %d\n%s", code, out)
	}
	if code, stderr := submitEcho(t, s, x, "permitted"); code != 0 {
		t.Fatalf("submit to an executor holding peer_node: exit %d\n%s\nexecutor log:\n%s", code, stderr, x.logTail())
	}

	// 3. Revoked on the executor: refused again.
	rev := filepath.Join(admin.home, "peer_node.revocation")
	if _, stderr, code := admin.run2("revoke", "--grant", f, "--out", rev); code != 0 {
		t.Fatalf("revoke: exit %d\n%s", code, stderr)
	}
	if out, code := x.run("revoke", "install", rev); code != 0 {
		t.Fatalf("revoke install on the executor: exit %d\n%s", code, out)
	}
	if code, stderr := submitEcho(t, s, x, "revoked"); code != 1 || !strings.Contains(stderr, "failed: executor_not_permitted") {
		t.Fatalf("submit after the executor's grant was revoked: exit %d\n%s", code, stderr)
	}
}
