package e2e

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/audit"
)

// TestAuthzRateLimit: an executor with a low message rate (policy.default rate 1/s, burst 8; a New peer
// gets half) receives a flood of task requests from one submitter. Enforced, part of the flood is refused
// with rate_limited (the submitter's agentctl prints the reason and exits 1; the executor audits
// ratelimit.exceeded and counts it) while a second submitter is served normally. In log-only mode
// (authorization.enforce.rate: false) the same flood is served in full and audited as "would deny".
func TestAuthzRateLimit(t *testing.T) {
	for _, mode := range []string{"enforced", "log_only"} {
		t.Run(mode, func(t *testing.T) {
			authz := "authorization: {default_peer_roles: [task_submitter]}\n"
			if mode == "log_only" {
				authz = "authorization: {default_peer_roles: [task_submitter], enforce: {rate: false}}\n"
			}
			x := newAgent(t, "executor", false)
			x.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: authz + "policy: {default: {rate: 1, burst: 8}}\n"})
			x.start()
			flooder, other := newAgent(t, "flooder", false), newAgent(t, "other", false)
			for _, s := range []*agent{flooder, other} {
				s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, "tcp")}})
				s.start()
			}
			for _, s := range []*agent{flooder, other} {
				eventually(t, 20*time.Second, s.name+"'s session with the executor", func() bool { return s.sessionWith(x.id) != nil })
			}

			// The flood: 14 task requests as fast as agentctl can submit them (no waiting).
			var ids []string
			for i := 0; i < 14; i++ {
				var v api.TaskView
				flooder.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "echo", "--data", "flood")
				ids = append(ids, v.TaskID)
			}
			// Meanwhile the other submitter is served normally.
			var v api.TaskView
			other.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "echo", "--data", "served", "--wait", "--timeout", "30s")
			checkResult(t, &v, x.id, "served")

			done, limited := 0, 0
			var limitedOut string
			for _, id := range ids {
				out, stderr, code := flooder.run2("task", "result", id, "--wait", "--timeout", "30s", "--json")
				var r api.TaskView
				_ = json.Unmarshal([]byte(out), &r)
				switch {
				case code == 0 && r.State == "done" && r.Result != nil && r.Result.Status == "ok":
					done++
				case code == 1 && r.State == "failed" && r.ErrorCode == "rate_limited" && strings.Contains(stderr, "failed: rate_limited"):
					limited++
					limitedOut = stderr
				default:
					t.Fatalf("task %s: exit %d\n%s%s", id, code, out, stderr)
				}
			}
			t.Logf("%s: %d served, %d refused with rate_limited", mode, done, limited)
			metrics := scrape(t, x.status().Metrics)
			if mode == "enforced" {
				// The burst (4 for a New peer) is shared with the flooder's acknowledgements of results.
				if limited < 6 || done < 1 || !strings.Contains(limitedOut, "exceeds 0.5 messages/s (burst 4)") {
					t.Fatalf("enforced: %d served, %d rate_limited (want some served and at least 6 refused)\n%s", done, limited, limitedOut)
				}
				if !auditHas(t, x, audit.RateLimited, func(e audit.Entry) bool {
					return e.Actor == flooder.id && e.Outcome == audit.OutcomeDenied && e.Details["reason"] == "rate_limited" && e.Details["limit"] == "rate"
				}) {
					t.Fatal("no ratelimit.exceeded record (denied) for the flooder")
				}
				if !regexp.MustCompile(`custos_rate_limited_total\{limit="rate"\} [1-9]`).MatchString(metrics) || !regexp.MustCompile(`custos_access_denied_total\{mode="enforced",reason="rate_limited"\} [1-9]`).MatchString(metrics) {
					t.Fatalf("rate-limit metrics missing:\n%s", grepLines(metrics, "denied"))
				}
			} else {
				if limited != 0 || done != len(ids) {
					t.Fatalf("log-only: %d served, %d refused; want all %d served", done, limited, len(ids))
				}
				if !auditHas(t, x, audit.RateLimited, func(e audit.Entry) bool {
					return e.Actor == flooder.id && e.Outcome == audit.OutcomeInfo && e.Details["would_deny"] == true && e.Details["mode"] == "log_only"
				}) {
					t.Fatal("no would-deny ratelimit.exceeded record for the flooder in log-only mode")
				}
				if !strings.Contains(metrics, `custos_access_denied_total{mode="log_only",reason="rate_limited"}`) || !strings.Contains(metrics, "custos_rate_limited_total{limit=\"rate\"} 0\n") {
					t.Fatalf("log-only metrics:\n%s", grepLines(metrics, "denied")+grepLines(metrics, "rate_limited"))
				}
			}
			if auditHas(t, x, audit.RateLimited, func(e audit.Entry) bool { return e.Actor == other.id }) {
				t.Fatal("the second submitter was rate-limited")
			}
		})
	}
}
