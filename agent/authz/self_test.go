package authz

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
)

// TestExecutorNeedsPeerNode: with authorization.own_roles: [] an agent runs a peer's task only when it
// holds process_tasks (and share_results) itself, through a peer_node grant of one of its administrators
// that it holds (agentctl grant install): without one, a task_request from a peer allowed to submit is
// refused with executor_not_permitted (the error_response names the permission and why), the engine never
// sees it, and access.denied is audited with the rbac reason; a task_result or feedback it would send is
// not sent. Once it holds the grant, it runs the task and sends. With own_roles absent (the default,
// [peer_node]) nothing is needed; in log-only mode the would-be refusal is audited and the task runs.
func TestExecutorNeedsPeerNode(t *testing.T) {
	ctx := context.Background()
	admin, sub := agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519)
	body := fmt.Sprintf("authorization: {admins: [%s], default_peer_roles: [task_submitter], own_roles: []}\n", admin.ID())
	a := newFixture(t, body)
	z := a.z
	from := &session.Peer{ID: sub.ID(), Role: session.Initiator, RemoteAddr: "127.0.0.1:7000"}
	handled := func() int {
		a.tasks.mu.Lock()
		defer a.tasks.mu.Unlock()
		return len(a.tasks.handled)
	}
	sentOut := func(typ envelope.MessageType) bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return slices.Contains(a.out, typ)
	}
	self := a.self.ID().String()

	// No grant held: refused before the engine.
	id, req := requestFor("echo")
	err := z.Dispatch(ctx, from, message(envelope.TaskRequest, req))
	em, n := a.lastSent()
	if err == nil || n != 1 || em.TaskID != id || em.Code != ReasonExecutorNotPermitted || !strings.Contains(em.Message, "process_tasks") {
		t.Fatalf("task_request to an agent without process_tasks: %v; sent %+v", err, em)
	}
	if handled() != 0 {
		t.Fatal("the task engine saw a task this agent may not run")
	}
	if !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Actor == self && e.Subject == string(rbac.SelfTaskExecute) && e.Details["reason"] == ReasonExecutorNotPermitted &&
			e.Details["rbac_reason"] == string(rbac.NoGrant) && e.Details["permission"] == "process_tasks" && e.Details["peer"] == sub.ID().String() && e.Details["task_id"] == id
	}) {
		t.Fatalf("no access.denied record of the refused execution: %+v", a.records)
	}
	// Results and feedback are not sent.
	for _, typ := range []envelope.MessageType{envelope.TaskResult, envelope.Feedback} {
		err := z.Send(ctx, sub.ID().String(), typ, []byte("{}"))
		if !errors.Is(err, rbac.ErrDenied) || !strings.Contains(err.Error(), ReasonExecutorNotPermitted) || !strings.Contains(err.Error(), "share_results") {
			t.Fatalf("sending %s without share_results: %v", typ, err)
		}
		if sentOut(typ) {
			t.Fatalf("%s sent without share_results", typ)
		}
	}
	if !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Actor == self && e.Subject == string(rbac.SelfResultSend) && e.Details["permission"] == "share_results"
	}) {
		t.Fatal("no access.denied record of the result not sent")
	}
	// Other messages need nothing of the sender.
	if err := z.Send(ctx, sub.ID().String(), envelope.TaskResponse, []byte("{}")); err != nil || !sentOut(envelope.TaskResponse) {
		t.Fatalf("task_response: %v", err)
	}

	// A task_submitter grant is not enough; an expired peer_node grant says so.
	if err := a.held.Put(grantFor(t, admin, a.self.ID(), rbac.TaskSubmitter, time.Now(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := z.AuthorizeSelf(ctx, rbac.SelfTaskExecute); rbac.ReasonOf(err) != rbac.PermissionDenied {
		t.Fatalf("with a task_submitter grant: %v", err)
	}
	if err := a.held.Put(grantFor(t, admin, a.self.ID(), rbac.PeerNode, time.Now().Add(-2*time.Hour), time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := z.AuthorizeSelf(ctx, rbac.SelfTaskExecute); rbac.ReasonOf(err) != rbac.GrantExpired || !strings.Contains(err.Error(), "agentctl grant install") {
		t.Fatalf("with an expired peer_node grant: %v", err)
	}

	// A peer_node grant of an administrator: the task runs, the result goes out.
	if err := a.held.Put(grantFor(t, admin, a.self.ID(), rbac.PeerNode, time.Now(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	id2, req2 := requestFor("echo")
	if err := z.Dispatch(ctx, from, message(envelope.TaskRequest, req2)); err != nil || handled() != 1 {
		t.Fatalf("task_request with a peer_node grant: %v (handled %d)", err, handled())
	}
	if err := z.Send(ctx, sub.ID().String(), envelope.TaskResult, (&tasks.ResultMessage{TaskID: id2}).Encode()); err != nil || !sentOut(envelope.TaskResult) {
		t.Fatalf("task_result with a peer_node grant: %v", err)
	}

	// The default: own_roles absent is [peer_node].
	b := newFixture(t, fmt.Sprintf("authorization: {admins: [%s], default_peer_roles: [task_submitter]}\n", admin.ID()))
	if err := b.z.Dispatch(ctx, from, message(envelope.TaskRequest, req)); err != nil || len(b.tasks.handled) != 1 {
		t.Fatalf("default own roles: %v", err)
	}
	// Log-only: audited as a would-be refusal, the task runs.
	c := newFixture(t, fmt.Sprintf("authorization: {admins: [%s], default_peer_roles: [task_submitter], own_roles: [], enforce: {grants: false}}\n", admin.ID()))
	if err := c.z.Dispatch(ctx, from, message(envelope.TaskRequest, req)); err != nil || len(c.tasks.handled) != 1 {
		t.Fatalf("log-only: %v", err)
	}
	if !c.audit(t, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Subject == string(rbac.SelfTaskExecute) && e.Outcome == audit.OutcomeInfo && e.Details["would_deny"] == true
	}) {
		t.Fatal("log-only: no would-be denial audited")
	}
}

// TestAnswersLookupsNeedsDiscoverPeers: whether this agent's DHT answers other agents' lookups (server
// mode) is the self operation self.lookup.answer, which needs discover_peers of its own roles (ADR 0094
// amendment): with own_roles [] and no grant held it only asks (client mode), with a peer_node grant of
// an administrator, or the default own roles ([peer_node]), or in log-only mode, it answers.
func TestAnswersLookupsNeedsDiscoverPeers(t *testing.T) {
	ctx := context.Background()
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	if req, err := rbac.Required(rbac.Operation("self.lookup.answer")); err != nil || req.Permission != rbac.DiscoverPeers || req.From != rbac.FromSelf {
		t.Fatalf("self.lookup.answer in rbac.Table: %+v, %v", req, err)
	}
	a := newFixture(t, fmt.Sprintf("authorization: {admins: [%s], own_roles: []}\n", admin.ID()))
	if a.z.AnswersLookups(ctx) {
		t.Fatal("own_roles [] and no grant held: the DHT answers lookups (want client mode)")
	}
	if !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Subject == string(rbac.SelfLookupAnswer) && e.Details["permission"] == "discover_peers" && e.Details["rbac_reason"] == string(rbac.NoGrant)
	}) {
		t.Fatalf("no access.denied record of the refused self.lookup.answer: %+v", a.records)
	}
	if err := a.held.Put(grantFor(t, admin, a.self.ID(), rbac.TaskSubmitter, time.Now(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	if a.z.AnswersLookups(ctx) {
		t.Fatal("a task_submitter grant (no discover_peers): the DHT answers lookups")
	}
	if err := a.held.Put(grantFor(t, admin, a.self.ID(), rbac.PeerNode, time.Now(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !a.z.AnswersLookups(ctx) {
		t.Fatal("with a peer_node grant of an administrator: the DHT does not answer lookups")
	}
	if b := newFixture(t, fmt.Sprintf("authorization: {admins: [%s]}\n", admin.ID())); !b.z.AnswersLookups(ctx) {
		t.Fatal("default own roles [peer_node]: the DHT does not answer lookups")
	}
	if c := newFixture(t, fmt.Sprintf("authorization: {admins: [%s], own_roles: [], enforce: {grants: false}}\n", admin.ID())); !c.z.AnswersLookups(ctx) {
		t.Fatal("log-only: the DHT does not answer lookups")
	}
}
