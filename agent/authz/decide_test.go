package authz

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
)

// TestAuthorizeLocal is TestControlSocketRoles (agent/daemon) without the socket: a caller mapped to
// task_submitter may list tasks (view_results) but not read the status (view_status) nor sign grants
// (manage_security): permission_denied, audited; an operation the table does not name is refused.
func TestAuthorizeLocal(t *testing.T) {
	a := newFixture(t, fmt.Sprintf("authorization: {local: {users: {\"%d\": [task_submitter]}}}\n", os.Getuid()))
	ctx := context.Background()
	caller := rbac.Cred{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: 1}
	if err := a.z.AuthorizeLocal(ctx, caller, "task.list"); err != nil {
		t.Fatalf("task.list as task_submitter: %v", err)
	}
	for _, op := range []string{"status", "grant.issue"} {
		err := a.z.AuthorizeLocal(ctx, caller, op)
		if control.CodeOf(err) != control.CodeDenied || !strings.Contains(err.Error(), "permission_denied") || !strings.Contains(err.Error(), "task_submitter") {
			t.Fatalf("%s as task_submitter: %v", op, err)
		}
	}
	if !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Actor == fmt.Sprintf("uid:%d", os.Getuid()) && e.Subject == string(rbac.CtlStatus) && e.Details["permission"] == "view_status" && e.Details["reason"] == "permission_denied"
	}) {
		t.Fatal("no access.denied record for the refused control request")
	}
	if err := a.z.AuthorizeLocal(ctx, caller, "no.such.op"); control.CodeOf(err) != control.CodeDenied || !strings.Contains(err.Error(), "has no entry") {
		t.Fatalf("an operation missing from the table: %v", err)
	}
}

// TestDispatchRBAC is the authorization part of TestDispatch (agent/daemon) on fakes: RBAC per message
// type (no grant, a missing permission), an unsolicited result, an uncorrelated error_response, the rate
// limit of one peer not touching another, and log-only rate limits.
func TestDispatchRBAC(t *testing.T) {
	ctx := context.Background()
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	noGrant, sub, flood, exec := agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519),
		agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519)
	body := fmt.Sprintf(`authorization: {admins: [%s]}
policy:
  peers:
    %s: {rate: 2, burst: 4}
`, admin.ID(), flood.ID())
	a := newFixture(t, body)
	z := a.z
	for _, p := range []*agenttest.Identity{sub, flood} {
		if err := z.RBAC().AddGrant(ctx, grantFor(t, admin, p.ID(), rbac.TaskSubmitter, time.Now(), time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	from := func(p *agenttest.Identity) *session.Peer {
		return &session.Peer{ID: p.ID(), Role: session.Initiator, RemoteAddr: "127.0.0.1:7000"}
	}

	// No grant: error_response no_grant naming the task, audit, metric.
	id, req := requestFor("echo")
	err := z.Dispatch(ctx, from(noGrant), message(envelope.TaskRequest, req))
	if em, n := a.lastSent(); err == nil || n != 1 || em.TaskID != id || em.Code != "no_grant" || !strings.Contains(em.Message, "holds no role grant") {
		t.Fatalf("no grant: %v; sent %+v", err, em)
	}
	if !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Actor == noGrant.ID().String() && e.Subject == "task_request" && e.Details["reason"] == "no_grant" && e.Details["task_id"] == id
	}) {
		t.Fatal("no access.denied record")
	}
	if a.metrics.denied["no_grant/true"] != 1 {
		t.Fatalf("denials counted: %v", a.metrics.denied)
	}
	// A heartbeat needs discover_peers: refused, but there is no task to answer about.
	if err := z.Dispatch(ctx, from(sub), message(envelope.Heartbeat, []byte("{}"))); err == nil || !strings.Contains(err.Error(), "permission_denied") {
		t.Fatalf("heartbeat from a task_submitter: %v", err)
	}
	if _, n := a.lastSent(); n != 1 {
		t.Fatal("an error_response was sent without a task to answer about")
	}
	// An unsolicited result needs a role.
	unsolicited := (&tasks.ResultMessage{TaskID: tasks.NewTaskID(), Evidence: []byte("e"), Delegation: []byte("d")}).Encode()
	if err := z.Dispatch(ctx, from(exec), message(envelope.TaskResult, unsolicited)); err == nil || !strings.Contains(err.Error(), "no_grant") {
		t.Fatalf("unsolicited result: %v", err)
	}
	if em, n := a.lastSent(); n != 2 || em.Code != "no_grant" {
		t.Fatalf("unsolicited result answered %+v (%d)", em, n)
	}
	// An error_response answering nothing is audited and never answered.
	if err := z.Dispatch(ctx, from(sub), message(envelope.ErrorResponse, (&tasks.ErrorMessage{TaskID: tasks.NewTaskID(), Code: "busy"}).Encode())); err != nil {
		t.Fatal(err)
	}
	if _, n := a.lastSent(); n != 2 || !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool { return e.Details["reason"] == ReasonUncorrelated }) {
		t.Fatal("uncorrelated error_response: answered, or not audited")
	}

	// Flood: the flooder's bucket (2/s × 0.5 for a New peer, burst 2) empties; the other submitter is served.
	limited := 0
	for i := 0; i < 6; i++ {
		_, req := requestFor("nosuchhandler")
		if err := z.Dispatch(ctx, from(flood), message(envelope.TaskRequest, req)); err != nil && strings.Contains(err.Error(), "rate_limited") {
			limited++
		}
	}
	if limited < 3 {
		t.Fatalf("%d of 6 flood messages rate-limited", limited)
	}
	if em, _ := a.lastSent(); em.Code != "rate_limited" || !strings.Contains(em.Message, "exceeds 1 messages/s (burst 2)") {
		t.Fatalf("flood answer %+v", em)
	}
	_, req = requestFor("echo")
	if err := z.Dispatch(ctx, from(sub), message(envelope.TaskRequest, req)); err != nil {
		t.Fatalf("the other submitter during the flood: %v", err)
	}

	// Log-only rate limits: the flooder is served, each would-be denial audited.
	if err := a.reload(t, strings.Replace(body, "authorization: {", "authorization: {enforce: {rate: false}, ", 1)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		_, req := requestFor("nosuchhandler")
		if err := z.Dispatch(ctx, from(flood), message(envelope.TaskRequest, req)); err != nil && strings.Contains(err.Error(), "rate_limited") {
			t.Fatalf("log-only: %v", err)
		}
	}
	if !a.audit(t, audit.RateLimited, func(e audit.Entry) bool {
		return e.Actor == flood.ID().String() && e.Details["would_deny"] == true && e.Outcome == audit.OutcomeInfo
	}) {
		t.Fatal("no would-deny ratelimit.exceeded record")
	}
}

// TestDispatchOnBehalfOf: task requests a gateway sends on behalf of two clients are rate-limited per
// (gateway, client) (policy.on_behalf_of, ADR 0100): one client over its share is refused rate_limited,
// naming it, while the other client of the same gateway is still served.
func TestDispatchOnBehalfOf(t *testing.T) {
	ctx := context.Background()
	admin, gw := agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519)
	a := newFixture(t, fmt.Sprintf(`authorization: {admins: [%s]}
policy:
  on_behalf_of: {share: 0.25}
  peers:
    %s: {rate: 20, burst: 40}
`, admin.ID(), gw.ID()))
	if err := a.z.RBAC().AddGrant(ctx, grantFor(t, admin, gw.ID(), rbac.TaskSubmitter, time.Now(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	peer := &session.Peer{ID: gw.ID(), Role: session.Initiator, RemoteAddr: "127.0.0.1:7000"}
	send := func(client string) error {
		req := (&tasks.Request{TaskID: tasks.NewTaskID(), Handler: "echo", Input: []byte("x"), OnBehalfOf: client}).Encode()
		return a.z.Dispatch(ctx, peer, message(envelope.TaskRequest, req))
	}
	// A New peer gets half its limits (fakeRep): rate 10, burst 20; a quarter of that per client: burst 5.
	for i := 0; i < 5; i++ {
		if err := send("alice"); err != nil {
			t.Fatalf("alice's request %d: %v", i, err)
		}
	}
	if err := send("alice"); err == nil || !strings.Contains(err.Error(), "rate_limited") {
		t.Fatalf("alice over her share: %v", err)
	}
	if em, _ := a.lastSent(); em.Code != "rate_limited" || !strings.Contains(em.Message, "on behalf of alice") {
		t.Fatalf("answer %+v", em)
	}
	if err := send("bob"); err != nil {
		t.Fatalf("bob, through the same gateway, after alice ran out: %v", err)
	}
	if err := send(""); err != nil {
		t.Fatalf("the gateway's own task: %v", err)
	}
}
