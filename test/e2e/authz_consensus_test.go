package e2e

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/api/taskops"
	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/audit"
)

// TestAuthzRedundantTask: task submit --redundancy 3 runs one task on three executor processes, one of
// which lies (its "digest" handler is a command that prints a wrong answer). The honest result wins the
// reputation-weighted vote; the liar's signed result is kept as evidence (printed, checkable by a third
// party with agentctl task verify, counted in agentctl peers) and its reputation drops.
func TestAuthzRedundantTask(t *testing.T) {
	lie := "    exec:\n      command: /bin/sh\n      args: [\"-c\", \"cat >/dev/null; echo this-is-not-the-digest\"]\n" +
		"      env: [\"PATH=/usr/bin:/bin\"]\n      timeout: 10s"
	var xs []*agent
	for i, name := range []string{"honest-1", "honest-2", "liar"} {
		x := newAgent(t, name, false)
		h := map[string]string{"digest": "    builtin: sha256"}
		if i == 2 {
			h["digest"] = lie
		}
		x.writeConfig(agentConfig{Transports: []string{"tcp"}, Handlers: h})
		x.start()
		xs = append(xs, x)
	}
	liar := xs[2]
	s := newAgent(t, "submitter", false)
	// The submitter is its own administrator: it signs the stake table its stake and hybrid votes use.
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {admins: [" + s.id + "], default_peer_roles: [task_submitter]}\n"})
	s.start()
	for _, x := range xs {
		if out, code := s.run("peers", "connect", x.dialAddr("tcp"), "--id", x.id); code != 0 {
			t.Fatalf("connect %s: %s", x.name, out)
		}
	}
	// Too many replicas for the connected peers: refused before anything is sent.
	if _, stderr, code := s.run2("task", "submit", "--redundancy", "4", "--handler", "digest", "--data", "x"); code != 1 || !strings.Contains(stderr, "not enough selectable peers") {
		t.Fatalf("--redundancy 4 with 3 peers: exit %d\n%s", code, stderr)
	}

	input := "the input every executor digests"
	var v api.ReplicatedView
	s.ctlJSON(&v, "task", "submit", "--redundancy", "3", "--vote", "reputation", "--handler", "digest", "--data", input, "--timeout", "60s")
	want := hexSHA256([]byte(input))
	wantDigest := consensus.DigestOf([]byte(want))
	if !v.Accepted || string(v.Output) != want || v.Digest != hex.EncodeToString(wantDigest[:]) || len(v.Selected) != 3 {
		t.Fatalf("replicated task: %+v", v)
	}
	votes := map[string]api.VoteView{}
	for _, x := range v.Votes {
		votes[x.Peer] = x
	}
	for _, x := range xs[:2] {
		if votes[x.id].Vote != "agree" || votes[x.id].Digest != v.Digest || votes[x.id].Weight <= 0 {
			t.Fatalf("honest %s: %+v", x.name, votes[x.id])
		}
	}
	if lv := votes[liar.id]; lv.Vote != "dissent" || lv.Digest == v.Digest || lv.Status != "ok" {
		t.Fatalf("liar: %+v", lv)
	}
	if len(v.Evidence) != 1 || v.Evidence[0].Peer != liar.id || v.Evidence[0].Kind != "dissent" || v.Evidence[0].Accepted != v.Digest {
		t.Fatalf("evidence: %+v", v.Evidence)
	}
	// The evidence is the liar's own signed result: a third party checks it with nothing but the file.
	file := filepath.Join(s.home, "liar-evidence.json")
	if err := os.WriteFile(file, v.Evidence[0].Evidence, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := s.run("task", "verify", file)
	if code != 0 || !strings.Contains(out, "was run by "+liar.id) || !strings.Contains(out, hexSHA256([]byte("this-is-not-the-digest\n"))) {
		t.Fatalf("task verify of the evidence: exit %d\n%s", code, out)
	}
	// It stays in the submitter's state, and the liar's reputation shows the wrong result.
	var ps []api.PeerStatus
	s.ctlJSON(&ps, "peers")
	for _, p := range ps {
		switch {
		case p.ID == liar.id:
			if p.Evidence != 1 || p.Reputation == nil || p.Reputation.Integrity >= 1 {
				t.Fatalf("the liar in peers: evidence %d, reputation %+v", p.Evidence, p.Reputation)
			}
		case p.Evidence != 0 || p.Reputation == nil || p.Reputation.Integrity != 1:
			t.Fatalf("honest peer %s in peers: evidence %d, reputation %+v", p.ID, p.Evidence, p.Reputation)
		}
	}
	out, code = s.run("peers")
	if code != 0 || !regexp.MustCompile(regexp.QuoteMeta(liar.id)+`.* errors=0\.\d+\(\d\) lost-votes=1 `).MatchString(out) {
		t.Fatalf("agentctl peers does not show the liar's error rate and lost vote:\n%s", out)
	}
	t.Logf("agentctl peers:\n%s", out)
	if !auditHas(t, s, taskops.TaskVote, func(e audit.Entry) bool {
		return e.Subject == v.Group && e.Details["accepted"] == true && e.Details["digest"] == v.Digest && strings.Contains(e.Details["dissenting"].(string), liar.id)
	}) {
		t.Fatal("no task.vote audit record")
	}
	// The vote gave feedback on its own (ADR 0090): -100 to the liar's run, +100 to each honest one.
	for _, x := range xs {
		want := json.Number("100")
		if x == liar {
			want = json.Number("-100")
		}
		if !auditHas(t, s, authz.FeedbackGiven, func(e audit.Entry) bool {
			return e.Subject == x.id && e.Details["source"] == authz.FeedbackVote && e.Details["rating"] == want && e.Details["task_id"] == votes[x.id].TaskID
		}) {
			t.Fatalf("no feedback.given %s for %s's run after the vote", want, x.name)
		}
	}
	// The text form names the accepted digest and the dissenting vote.
	out, code = s.run("task", "submit", "--redundancy", "3", "--handler", "digest", "--data", input)
	if code != 0 || !strings.Contains(out, v.Digest+" (") || !regexp.MustCompile(`(?m)^  `+regexp.QuoteMeta(liar.id)+` +dissent `).MatchString(out) {
		t.Fatalf("text output: exit %d\n%s", code, out)
	}
	t.Logf("agentctl task submit --redundancy 3:\n%s", out)

	// Stake-weighted votes need an administrator-signed stake table.
	if _, stderr, code := s.run2("task", "submit", "--redundancy", "3", "--vote", "stake", "--handler", "digest", "--data", input); code != 1 || !strings.Contains(stderr, "no stake table is installed") {
		t.Fatalf("--vote stake without a table: exit %d\n%s", code, stderr)
	}
	// A rich liar alone cannot carry a vote: it holds most of the stake, but at least two peers must agree.
	if _, stderr, code := s.run2("grant", "stake", "--stake", xs[0].id+"=10", "--stake", xs[1].id+"=10", "--stake", liar.id+"=100"); code != 0 || !strings.Contains(stderr, "in force here") {
		t.Fatalf("grant stake: exit %d\n%s", code, stderr)
	}
	var nv api.ReplicatedView
	out, stderr, code := s.run2("task", "submit", "--redundancy", "3", "--vote", "stake", "--handler", "digest", "--data", input, "--json")
	if code != 1 || json.Unmarshal([]byte(out), &nv) != nil || nv.Accepted || !strings.Contains(nv.Reason, "only 1 peer(s) agree") || !strings.Contains(stderr, "no quorum") {
		t.Fatalf("stake vote with a rich liar: exit %d %+v\n%s", code, nv, stderr)
	}
	// With a fair table installed from a file, the hybrid vote (stake x reputation) accepts the honest result.
	table := filepath.Join(s.home, "stakes.json")
	if _, stderr, code := s.run2("grant", "stake", "--stake", xs[0].id+"=10", "--stake", xs[1].id+"=10", "--stake", liar.id+"=10", "--out", table); code != 0 {
		t.Fatalf("grant stake --out: exit %d\n%s", code, stderr)
	}
	if out, code := s.run("grant", "stake", "install", table); code != 0 || !strings.Contains(out, "stake table of 3 agents from "+s.id+" is in force") {
		t.Fatalf("grant stake install: exit %d\n%s", code, out)
	}
	s.ctlJSON(&nv, "task", "submit", "--redundancy", "3", "--vote", "hybrid", "--handler", "digest", "--data", input)
	if !nv.Accepted || nv.Digest != v.Digest || nv.Mode != "hybrid" {
		t.Fatalf("hybrid vote: %+v", nv)
	}
}
