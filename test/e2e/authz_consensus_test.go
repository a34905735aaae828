package e2e

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/daemon"
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
	s.writeConfig(agentConfig{Transports: []string{"tcp"}})
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
	var v daemon.ReplicatedView
	s.ctlJSON(&v, "task", "submit", "--redundancy", "3", "--vote", "reputation", "--handler", "digest", "--data", input, "--timeout", "60s")
	want := hexSHA256([]byte(input))
	wantDigest := consensus.DigestOf([]byte(want))
	if !v.Accepted || string(v.Output) != want || v.Digest != hex.EncodeToString(wantDigest[:]) || len(v.Selected) != 3 {
		t.Fatalf("replicated task: %+v", v)
	}
	votes := map[string]daemon.VoteView{}
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
	var ps []daemon.PeerStatus
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
	if !auditHas(t, s, daemon.TaskVote, func(e audit.Entry) bool {
		return e.Subject == v.Group && e.Details["accepted"] == true && e.Details["digest"] == v.Digest && strings.Contains(e.Details["dissenting"].(string), liar.id)
	}) {
		t.Fatal("no task.vote audit record")
	}
	// The text form names the accepted digest and the dissenting vote.
	out, code = s.run("task", "submit", "--redundancy", "3", "--handler", "digest", "--data", input)
	if code != 0 || !strings.Contains(out, v.Digest+" (") || !regexp.MustCompile(`(?m)^  `+regexp.QuoteMeta(liar.id)+` +dissent `).MatchString(out) {
		t.Fatalf("text output: exit %d\n%s", code, out)
	}
	t.Logf("agentctl task submit --redundancy 3:\n%s", out)
}
