package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/events"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/audit"
)

// peerFactor is the named reputation factor of peer as a's agentctl peers --json shows it.
func peerFactor(t *testing.T, a *agent, peer, name string) reputation.Factor {
	t.Helper()
	var ps []api.PeerStatus
	a.ctlJSON(&ps, "peers")
	for _, p := range ps {
		if p.ID != peer || p.Reputation == nil {
			continue
		}
		for _, f := range p.Reputation.Factors {
			if f.Name == name {
				return f
			}
		}
	}
	t.Fatalf("%s: agentctl peers shows no %s factor for %s", a.name, name, peer)
	return reputation.Factor{}
}

// TestTrustLoop: the trust loop fed from both sides (ADR 0090). Submitter A sends tasks to executor B;
// observer C is connected to both and lets A share results (peer_node).
//   - contribution: B's verified sha256 result of a 256 KiB input raises B's resource_contribution on A;
//   - feedback: agentctl feedback -100 on that task lowers B's peer_feedback on A at full weight, is
//     audited with its comment, and reaches C, whose view of B's peer_feedback moves too;
//   - timeout: a task B accepts but never answers within A's tasks.timeout (3s) fails with code timeout
//     and counts as a failure in B's task_completion_rate;
//   - cancel: agentctl task cancel gives a task up (code cancelled) without charging B.
func TestTrustLoop(t *testing.T) {
	b := newAgent(t, "executor", false)
	stall := "    exec:\n      command: /bin/sh\n      args: [\"-c\", \"sleep 15\"]\n      sandbox: off\n" +
		"      env: [\"PATH=/usr/bin:/bin\"]\n      timeout: 30s"
	b.writeConfig(agentConfig{Transports: []string{"tcp"}, Handlers: map[string]string{"stall": stall}})
	b.start()
	c := newAgent(t, "observer", false)
	c.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {default_peer_roles: [task_submitter, peer_node]}\n"})
	c.start()
	a := newAgent(t, "submitter", false)
	a.writeConfig(agentConfig{Transports: []string{"tcp"}, Tasks: "{retry_interval: 500ms, timeout: 3s}"})
	a.start()
	for _, x := range []struct{ from, to *agent }{{a, b}, {a, c}, {c, b}} {
		if out, code := x.from.run("peers", "connect", x.to.dialAddr("tcp"), "--id", x.to.id); code != 0 {
			t.Fatalf("connect %s to %s: %s", x.from.name, x.to.name, out)
		}
	}

	// Contribution: a 256 KiB task served.
	in := randomInput(t, 256<<10)
	file := filepath.Join(a.home, "in.bin")
	if err := os.WriteFile(file, in, 0o600); err != nil {
		t.Fatal(err)
	}
	contrib0 := peerFactor(t, a, b.id, reputation.FactorContribution)
	var v api.TaskView
	a.ctlJSON(&v, "task", "submit", "--to", b.id, "--handler", "sha256", "--input", file, "--wait", "--timeout", "60s")
	checkResult(t, &v, b.id, hexSHA256(in))
	contrib := peerFactor(t, a, b.id, reputation.FactorContribution)
	if contrib.Evidence < 0.25 || contrib.Value <= contrib0.Value {
		t.Fatalf("resource_contribution after a 256 KiB task: %+v (before %+v), want at least 0.25 units (MiB + seconds) and a higher value", contrib, contrib0)
	}

	// Feedback.
	fb0 := peerFactor(t, a, b.id, reputation.FactorFeedback)
	seen0 := peerFactor(t, c, b.id, reputation.FactorFeedback)
	var res api.FeedbackResult
	a.ctlJSON(&res, "feedback", "--task", v.TaskID, "--score", "-100", "--comment", "the digest was late")
	if res.Subject != b.id || res.Rating != -100 || len(res.SentTo) != 1 || res.SentTo[0] != c.id {
		t.Fatalf("feedback: %+v, want B rated and the feedback sent to C only", res)
	}
	fb := peerFactor(t, a, b.id, reputation.FactorFeedback)
	if fb.Evidence-fb0.Evidence < 0.99 || fb.Value >= fb0.Value || fb.Weight <= 0 {
		t.Fatalf("peer_feedback of B on A after -100: %+v (before %+v)", fb, fb0)
	}
	if !auditHas(t, a, authz.FeedbackGiven, func(e audit.Entry) bool {
		return e.Subject == b.id && e.Details["task_id"] == v.TaskID && e.Details["rating"] == json.Number("-100") && e.Details["comment"] == "the digest was late"
	}) {
		t.Fatal("no feedback.given record with the comment on A")
	}
	eventually(t, 10*time.Second, "C counts A's feedback about B", func() bool {
		f := peerFactor(t, c, b.id, reputation.FactorFeedback)
		return f.Evidence > seen0.Evidence && f.Value < seen0.Value
	})
	if _, stderr, code := a.run2("feedback", "--task", v.TaskID, "--score", "50"); code == 0 || !strings.Contains(stderr, "already gave feedback") {
		t.Fatalf("a second rating of the same task: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := a.run2("feedback", "--task", v.TaskID, "--score", "101"); code != 2 || !strings.Contains(stderr, "--score 101 is outside -100..100") {
		t.Fatalf("--score 101: exit %d\n%s", code, stderr)
	}

	// Cancel: B is not charged.
	done0 := peerFactor(t, a, b.id, reputation.FactorCompletion)
	var sv api.TaskView
	a.ctlJSON(&sv, "task", "submit", "--to", b.id, "--handler", "stall", "--data", "cancel me")
	var cv api.TaskView
	a.ctlJSON(&cv, "task", "cancel", sv.TaskID)
	if cv.State != "failed" || cv.ErrorCode != "cancelled" {
		t.Fatalf("task cancel: %+v", cv)
	}
	if _, stderr, code := a.run2("task", "cancel", sv.TaskID); code == 0 || !strings.Contains(stderr, "nothing to cancel") {
		t.Fatalf("cancel twice: exit %d\n%s", code, stderr)
	}

	// Timeout: B accepts the task and never answers within 3s.
	var tv api.TaskView
	a.ctlJSON(&tv, "task", "submit", "--to", b.id, "--handler", "stall", "--data", "never answered")
	eventually(t, 30*time.Second, "the stalled task to time out", func() bool {
		var g api.TaskView
		a.ctlJSON(&g, "task", "result", tv.TaskID)
		return g.State == "failed" && g.ErrorCode == "timeout"
	})
	done := peerFactor(t, a, b.id, reputation.FactorCompletion)
	if d := done.Evidence - done0.Evidence; d < 0.99 || d > 1.01 || done.Value >= done0.Value {
		t.Fatalf("task_completion_rate of B after one timeout and one cancel: %+v (before %+v), want one failure more", done, done0)
	}
	if !auditHas(t, a, events.TaskTimedOut, func(e audit.Entry) bool { return e.Actor == b.id && e.Subject == tv.TaskID }) ||
		!auditHas(t, a, events.TaskCancelled, func(e audit.Entry) bool { return e.Actor == b.id && e.Subject == sv.TaskID }) {
		t.Fatal("no task.timed_out or task.cancelled record on A")
	}
	out, code := a.run("peers")
	t.Logf("agentctl peers on A:\n%s", out)
	if code != 0 {
		t.Fatalf("peers: exit %d", code)
	}
}
