package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// authzDaemon starts a daemon without transports with the given configuration; sent collects the
// error_responses its dispatcher answers with.
type authzDaemon struct {
	d    *Daemon
	home string
	cfg  string
	mu   sync.Mutex
	sent []tasks.ErrorMessage
}

func startAuthzDaemon(t *testing.T, body string) *authzDaemon {
	t.Helper()
	home, cust := testHome(t)
	cfgPath := filepath.Join(home, "agent.yaml")
	cfg, digest := writeConfig(t, cfgPath, "metrics: {disabled: true}\n"+body)
	d, err := Start(context.Background(), Options{Home: home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = d.Shutdown(ctx)
	})
	ad := &authzDaemon{d: d, home: home, cfg: cfgPath}
	d.authz.SetSender(func(_ context.Context, peer string, typ envelope.MessageType, payload []byte) error {
		if typ != envelope.ErrorResponse {
			return fmt.Errorf("unexpected %s", typ)
		}
		em, err := tasks.DecodeError(payload)
		if err != nil {
			return err
		}
		ad.mu.Lock()
		ad.sent = append(ad.sent, *em)
		ad.mu.Unlock()
		return nil
	})
	return ad
}

// lastSent returns the last error_response sent and how many were sent.
func (a *authzDaemon) lastSent() (tasks.ErrorMessage, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.sent) == 0 {
		return tasks.ErrorMessage{}, 0
	}
	return a.sent[len(a.sent)-1], len(a.sent)
}

func (a *authzDaemon) audit(t *testing.T, typ audit.EventType, match func(audit.Entry) bool) bool {
	t.Helper()
	found := false
	if err := audit.Query(context.Background(), filepath.Join(a.home, AuditDir), audit.Filter{Types: []string{string(typ)}, Keys: a.d.db.SubjectKeys}, func(e audit.Entry) error {
		found = found || match(e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return found
}

func grantFor(t *testing.T, admin *agenttest.Identity, subject identity.ID, role rbac.Role, issued time.Time, ttl time.Duration) rbac.Grant {
	t.Helper()
	g, err := rbac.IssueGrant(context.Background(), admin.Current(), admin.ID(), subject, role, issued, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestEveryControlOpIsAuthorized: the daemon serves exactly the operations of agent/api's table, each
// with a control permission of rbac's table (agent/api.TestTableMatchesRBAC checks the table itself).
func TestEveryControlOpIsAuthorized(t *testing.T) {
	a := startAuthzDaemon(t, "")
	hs, err := api.Join(a.d.services()...)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := api.Ops(hs)
	if err != nil {
		t.Fatal(err)
	}
	for op, o := range ops {
		if req, err := rbac.Required(o.Permission); err != nil || req.From != rbac.FromLocal || req.Permission == "" {
			t.Errorf("control operation %s maps to %s: %+v %v", op, o.Permission, req, err)
		}
	}
	if len(ops) != len(api.Table()) {
		t.Errorf("the daemon serves %d operations, api.Table has %d", len(ops), len(api.Table()))
	}
}

// TestControlSocketRoles: a caller mapped to task_submitter may list tasks (view_results) but not read
// the status (view_status) nor sign grants (manage_security): permission_denied, audited.
func TestControlSocketRoles(t *testing.T) {
	a := startAuthzDaemon(t, fmt.Sprintf("authorization: {local: {users: {\"%d\": [task_submitter]}}}\n", os.Getuid()))
	sock := filepath.Join(a.home, ControlFile)
	ctx := context.Background()
	if err := control.Call(ctx, sock, api.OpTaskList, nil, &[]api.TaskView{}); err != nil {
		t.Fatalf("task.list as task_submitter: %v", err)
	}
	for _, op := range []string{api.OpStatus, api.OpGrantIssue} {
		err := control.Call(ctx, sock, op, nil, nil)
		if control.CodeOf(err) != control.CodeDenied || !strings.Contains(err.Error(), "permission_denied") || !strings.Contains(err.Error(), "task_submitter") {
			t.Fatalf("%s as task_submitter: %v", op, err)
		}
	}
	if !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Actor == fmt.Sprintf("uid:%d", os.Getuid()) && e.Subject == string(rbac.CtlStatus) && e.Details["permission"] == "view_status" && e.Details["reason"] == "permission_denied"
	}) {
		t.Fatal("no access.denied record for the refused control request")
	}
}

var msgSeq int

func message(typ envelope.MessageType, payload []byte) *session.Message {
	msgSeq++
	return &session.Message{Envelope: &envelope.Envelope{Header: envelope.Header{MessageType: typ, MessageID: fmt.Sprintf("m%d", msgSeq)}}, Payload: payload}
}

func requestFor(handler string) (string, []byte) {
	id := tasks.NewTaskID()
	return id, (&tasks.Request{TaskID: id, Handler: handler, Input: []byte("x")}).Encode()
}

// TestDispatch: RBAC per message type (no grant, default roles, answers authorized by correlation), an
// uncorrelated error_response, the rate limit of one peer not touching another, the concurrent-task quota
// and its release, log-only rate limits, and signed feedback.
func TestDispatch(t *testing.T) {
	ctx := context.Background()
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	noGrant, sub, flood, quota, exec, giver := agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519),
		agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519), agenttest.NewIdentity(t, keystore.Ed25519),
		agenttest.NewIdentity(t, keystore.Ed25519)
	body := fmt.Sprintf(`authorization: {admins: [%s]}
policy:
  peers:
    %s: {rate: 2, burst: 4}
    %s: {max_concurrent_tasks: 1}
handlers:
  echo: {builtin: echo}
  slow: {exec: {command: /bin/sleep, args: ["1"]}}
`, admin.ID(), flood.ID(), quota.ID())
	a := startAuthzDaemon(t, body)
	z := a.d.authz
	for _, p := range []*agenttest.Identity{sub, flood, quota} {
		if err := z.RBAC().AddGrant(ctx, grantFor(t, admin, p.ID(), rbac.TaskSubmitter, time.Now(), time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := z.RBAC().AddGrant(ctx, grantFor(t, admin, giver.ID(), rbac.PeerNode, time.Now(), time.Hour)); err != nil {
		t.Fatal(err)
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
	// A heartbeat needs discover_peers: refused, but there is no task to answer about.
	if err := z.Dispatch(ctx, from(sub), message(envelope.Heartbeat, []byte("{}"))); err == nil || !strings.Contains(err.Error(), "permission_denied") {
		t.Fatalf("heartbeat from a task_submitter: %v", err)
	}
	if _, n := a.lastSent(); n != 1 {
		t.Fatal("an error_response was sent without a task to answer about")
	}

	// Answers to this agent's own requests need no role; an unsolicited result does.
	o, err := a.d.engine.Submit(ctx, exec.ID().String(), "echo", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	bogus := (&tasks.ResultMessage{TaskID: o.TaskID, Evidence: []byte("e"), Delegation: []byte("d")}).Encode()
	if err := z.Dispatch(ctx, from(exec), message(envelope.TaskResult, bogus)); err == nil || strings.Contains(err.Error(), "refused") {
		t.Fatalf("an answer to this agent's own task was refused (or not checked by the engine): %v", err)
	}
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
	if _, n := a.lastSent(); n != 2 || !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool { return e.Details["reason"] == authz.ReasonUncorrelated }) {
		t.Fatal("uncorrelated error_response: answered, or not audited")
	}

	// Flood: the flooder's bucket (2/s × 0.5 for a New peer, burst 2) empties; the other submitter is served.
	limited := 0
	for i := 0; i < 6; i++ {
		_, req := requestFor("nosuchhandler") // the engine refuses these: no task runs
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
	if err := z.Dispatch(ctx, from(sub), message(envelope.TaskRequest, req)); err != nil && strings.Contains(err.Error(), "refused") {
		t.Fatalf("the other submitter during the flood: %v", err)
	}

	// Quota: one running task at a time for this peer; the slot is freed when the task ends.
	first, req1 := requestFor("slow")
	_ = z.Dispatch(ctx, from(quota), message(envelope.TaskRequest, req1))
	_, req2 := requestFor("slow")
	if err := z.Dispatch(ctx, from(quota), message(envelope.TaskRequest, req2)); err == nil || !strings.Contains(err.Error(), "quota_exceeded") {
		t.Fatalf("second concurrent task: %v", err)
	}
	// A retry of the running task is not a new task: it is not refused.
	if err := z.Dispatch(ctx, from(quota), message(envelope.TaskRequest, req1)); err != nil && strings.Contains(err.Error(), "refused") {
		t.Fatalf("retry of the running task: %v", err)
	}
	// The engine stores the task as done, then reports "finished", which frees the slot: wait for both.
	deadline := time.Now().Add(10 * time.Second)
	slotHeld := func() bool { return z.HoldsSlot(quota.ID().String(), first) }
	for {
		in, _ := a.d.taskStore.Inbound(quota.ID().String(), first)
		if in != nil && in.State == tasks.InDone && !slotHeld() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slow task did not finish and free its slot")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, req3 := requestFor("slow")
	if err := z.Dispatch(ctx, from(quota), message(envelope.TaskRequest, req3)); err != nil && strings.Contains(err.Error(), "refused") {
		t.Fatalf("a task after the first ended: %v", err)
	}

	// Signed feedback from the peer that signed it counts; relayed feedback does not. It must carry its task
	// reference: the subject's signed result of that task for the giver (issue 12 finding 6); feedback
	// with a made-up reference is refused and not counted.
	for _, p := range []*agenttest.Identity{giver, exec} {
		if _, err := a.d.peers.UpdateLog(p.ID(), &p.Log); err != nil {
			t.Fatal(err)
		}
	}
	dm, err := delegation.NewManager(ctx, delegation.Config{Identity: exec.Current(), State: exec.State, Clock: time.Now, KEM: suite.KEMX25519})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := dm.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.d.peers.PutDelegation(keys.Delegation); err != nil {
		t.Fatal(err)
	}
	tid, _ := requestFor("echo")
	doc := &tasks.ResultDoc{TaskID: tid, Requester: giver.ID().String(), Handler: "echo", InputSHA256: tasks.HexSHA256([]byte("in")),
		Status: tasks.ResultOK, Output: []byte("out"), OutputSHA256: tasks.HexSHA256([]byte("out")), Started: time.Now().Unix(), Finished: time.Now().Unix()}
	result, _, err := tasks.SignResult(ctx, exec.ID().String(), doc, keys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	otherTask, _ := requestFor("echo")
	for _, c := range []struct {
		name, task string
		ref        []byte
		want       string
	}{
		{"another task's result", otherTask, result, "not task " + otherTask},
		{"not an envelope", tid, []byte("made up"), "not an envelope"},
	} {
		fake, err := reputation.SignFeedback(ctx, giver.Current(), giver.ID(), exec.ID(), c.task, -100, c.ref, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := z.Dispatch(ctx, from(giver), message(envelope.Feedback, fake.Encode())); err == nil || !strings.Contains(err.Error(), "not confirmed") || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("fabricated feedback (%s): %v, want not confirmed ... %s", c.name, err, c.want)
		}
	}
	for _, x := range a.d.rep.Report(exec.ID()).Factors {
		if x.Name == reputation.FactorFeedback && x.Evidence != 0 {
			t.Fatalf("fabricated feedback counted: %+v", x)
		}
	}
	f, err := reputation.SignFeedback(ctx, giver.Current(), giver.ID(), exec.ID(), tid, 80, result, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := z.Dispatch(ctx, from(sub), message(envelope.Feedback, f.Encode())); err == nil || !strings.Contains(err.Error(), "permission_denied") {
		t.Fatalf("feedback from a task_submitter (no share_results): %v", err)
	}
	if err := z.Dispatch(ctx, from(giver), message(envelope.Feedback, f.Encode())); err != nil {
		t.Fatalf("feedback: %v", err)
	}
	var fb reputation.Factor
	for _, x := range a.d.rep.Report(exec.ID()).Factors {
		if x.Name == reputation.FactorFeedback {
			fb = x
		}
	}
	if fb.Evidence <= 0 {
		t.Fatalf("feedback not counted: %+v", fb)
	}

	// Log-only rate limits: the flooder is served, each would-be denial audited.
	writeConfig(t, a.cfg, "metrics: {disabled: true}\n"+strings.Replace(body, "authorization: {", "authorization: {enforce: {rate: false}, ", 1))
	if _, err := a.d.Reload(ctx); err != nil {
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

// TestGrantAndBlockOps drives the control operations: issuing a grant (in force here when this agent is
// its own administrator), installing grants (refusing one for another agent, an expired one, a forged
// one), blocking and unblocking a peer, and the peers list with the reputation factors and roles.
func TestGrantAndBlockOps(t *testing.T) {
	ctx := context.Background()
	d, home, cust, sock := startOwnAdmin(t)
	var err error
	self := cust.ID().String()
	peer := agenttest.NewIdentity(t, keystore.Ed25519)

	var g api.GrantIssueResult
	if err := control.Call(ctx, sock, api.OpGrantIssue, api.GrantIssueArgs{Subject: peer.ID().String(), Role: "peer_node", TTLSeconds: 60}, &g); err != nil {
		t.Fatal(err)
	}
	if !g.AdminHere || g.Warning != "" || g.Issuer != self || g.Expires.Sub(g.Issued) != time.Minute {
		t.Fatalf("grant: %+v", g)
	}
	if rs := d.authz.Roles(ctx, peer.ID()); len(rs) != 1 || rs[0] != rbac.PeerNode {
		t.Fatalf("the issued grant is not in force here: %v", rs)
	}
	if err := control.Call(ctx, sock, api.OpGrantIssue, api.GrantIssueArgs{Subject: peer.ID().String(), Role: "root"}, nil); control.CodeOf(err) != control.CodeBadRequest {
		t.Fatalf("unknown role: %v", err)
	}

	// Installing: the grant must be for this agent, unexpired, and verify under its issuer's key.
	err = control.Call(ctx, sock, api.OpGrantInstall, api.GrantInstallArgs{Grant: g.Grant}, nil)
	if control.CodeOf(err) != control.CodeBadRequest || !strings.Contains(err.Error(), "is for "+peer.ID().String()) {
		t.Fatalf("install a grant for another agent: %v", err)
	}
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	expired := grantFor(t, admin, cust.ID(), rbac.TaskSubmitter, time.Now().Add(-2*time.Hour), time.Hour)
	if err := control.Call(ctx, sock, api.OpGrantInstall, api.GrantInstallArgs{Grant: string(expired.Encode())}, nil); err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("install an expired grant: %v", err)
	}
	forged := grantFor(t, admin, cust.ID(), rbac.TaskSubmitter, time.Now(), time.Hour)
	forged.Issuer = peer.ID().String() // claims another issuer: the signature no longer verifies
	if err := control.Call(ctx, sock, api.OpGrantInstall, api.GrantInstallArgs{Grant: string(forged.Encode())}, nil); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("install a forged grant: %v", err)
	}
	good := grantFor(t, admin, cust.ID(), rbac.TaskSubmitter, time.Now(), time.Hour)
	var inst api.GrantInstallResult
	if err := control.Call(ctx, sock, api.OpGrantInstall, api.GrantInstallArgs{Grant: string(good.Encode()) + "\n"}, &inst); err != nil || inst.Grant.ID != good.ID || len(inst.Presented) != 0 {
		t.Fatalf("install: %+v %v", inst, err)
	}
	if gs, _ := rbac.DecodeGrants(d.authz.Presentable()); len(gs) != 1 || gs[0].ID != good.ID {
		t.Fatalf("presented grants: %v", gs)
	}
	var gl api.GrantsList
	if err := control.Call(ctx, sock, api.OpGrantsList, nil, &gl); err != nil || len(gl.Held) != 1 || gl.Held[0].State != "valid" {
		t.Fatalf("grants list: %+v %v", gl, err)
	}
	if err := control.Call(ctx, sock, api.OpGrantRemove, api.GrantRemoveArgs{GrantID: good.ID}, nil); err != nil || d.authz.Presentable() != nil {
		t.Fatalf("remove: %v", err)
	}
	if err := control.Call(ctx, sock, api.OpGrantRemove, api.GrantRemoveArgs{GrantID: good.ID}, nil); control.CodeOf(err) != control.CodeNotFound {
		t.Fatalf("remove twice: %v", err)
	}

	// Revoking the grant this agent issued: in force here at once.
	var rr api.RevokeResult
	if err := control.Call(ctx, sock, api.OpRevoke, api.RevokeArgs{GrantID: g.ID}, &rr); err != nil || !rr.AppliedHere {
		t.Fatalf("revoke: %+v %v", rr, err)
	}
	if err := d.authz.RBAC().Authorize(ctx, peer.ID(), rbac.ProcessTasks); rbac.ReasonOf(err) != rbac.GrantRevoked {
		t.Fatalf("after the revocation: %v", err)
	}

	// Block and unblock.
	var r reputation.Report
	if err := control.Call(ctx, sock, api.OpPeersBlock, api.PeerArgs{ID: peer.ID().String()}, &r); err != nil || r.Level != reputation.Blocked || !r.Manual {
		t.Fatalf("block: %+v %v", r, err)
	}
	if err := d.authz.Validate(ctx, &session.Peer{ID: peer.ID(), Role: session.Responder}); authz.RefusalOf(err) != authz.RefusalBlocked {
		t.Fatalf("a blocked peer we dial: %v", err)
	}
	var ps []api.PeerStatus
	if err := control.Call(ctx, sock, api.OpPeersList, nil, &ps); err != nil || len(ps) != 1 || ps[0].Trust != "blocked" || ps[0].Reputation == nil || len(ps[0].Reputation.Factors) == 0 {
		t.Fatalf("peers list: %+v %v", ps, err)
	}
	if err := control.Call(ctx, sock, api.OpPeersUnblock, api.PeerArgs{ID: peer.ID().String()}, &r); err != nil || r.Level != reputation.New {
		t.Fatalf("unblock: %+v %v", r, err)
	}
	if err := control.Call(ctx, sock, api.OpPeersUnblock, api.PeerArgs{ID: peer.ID().String()}, nil); control.CodeOf(err) != control.CodeBadRequest || !strings.Contains(err.Error(), "is not blocked") {
		t.Fatalf("unblock twice: %v", err)
	}
	if err := control.Call(ctx, sock, api.OpPeersBlock, api.PeerArgs{ID: self}, nil); control.CodeOf(err) != control.CodeBadRequest {
		t.Fatalf("block self: %v", err)
	}
	if !strings.Contains(fmt.Sprint(auditTypes(t, home)), string(audit.TrustChanged)) {
		t.Fatal("no trust.changed record for the block")
	}
}

func auditTypes(t *testing.T, home string) []string {
	t.Helper()
	var out []string
	if err := audit.Query(context.Background(), filepath.Join(home, AuditDir), audit.Filter{}, func(e audit.Entry) error {
		out = append(out, string(e.Type))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}
