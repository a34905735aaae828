package e2e

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/audit"
)

// TestRotateWhileRunningIsAudited: agentctl rotate --destroy-old on the SoftHSM-backed identity of a
// running agent. The command finds the audit log held by the daemon, tells the daemon (identity.reload),
// and the daemon writes key.rotate and key.destroy, switches to the new key without a SIGHUP, issues a
// delegation under it (key.delegate), and its peer sees generation 1. After SIGTERM, agentctl audit verify
// passes with checkpoints of both generations.
func TestRotateWhileRunningIsAudited(t *testing.T) {
	x := newAgent(t, "executor", true)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	s := newAgent(t, "submitter", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, "tcp")}})
	s.start()
	if v := submitSHA256(t, s, x); v.Result.DelegationGeneration != 0 {
		t.Fatalf("before the rotation: signed under generation %d", v.Result.DelegationGeneration)
	}

	out, errOut, code := x.run2("rotate", "--destroy-old")
	if code != 0 || !strings.Contains(out, "to generation 1") || !strings.Contains(out, "generation 0: destroyed") {
		t.Fatalf("rotate: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "the running agent picked up the change (generation 1) and recorded key.rotate, key.destroy in its audit log") {
		t.Fatalf("rotate did not report the daemon's records:\n%s\ndaemon log:\n%s", errOut, x.logTail())
	}
	if g := x.status().Generation; g != 1 {
		t.Fatalf("status generation %d right after agentctl rotate (no SIGHUP), want 1", g)
	}
	v := submitSHA256(t, s, x)
	if v.Result.DelegationGeneration != 1 {
		t.Fatalf("after the rotation: signed under generation %d, want 1", v.Result.DelegationGeneration)
	}
	var ps []api.PeerStatus
	s.ctlJSON(&ps, "peers")
	if len(ps) != 1 || ps[0].Generation == nil || *ps[0].Generation != 1 {
		t.Fatalf("the submitter's view of the executor: %+v", ps)
	}

	out, code = x.run("audit", "query", "--type", "key.rotate", "--json")
	if code != 0 {
		t.Fatalf("audit query: %s", out)
	}
	var rec struct {
		Actor   string         `json:"actor"`
		Subject string         `json:"subject"`
		Details map[string]any `json:"details"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &rec); err != nil {
		t.Fatalf("audit query --type key.rotate --json: want exactly one record: %v\n%s", err, out)
	}
	if rec.Subject != x.id || !strings.HasPrefix(rec.Actor, "uid:") || rec.Details["source"] != custody.SourceDaemon ||
		rec.Details["generation"] != float64(1) || !strings.HasPrefix(rec.Details["key_uri"].(string), "pkcs11:") ||
		strings.Contains(rec.Details["key_uri"].(string), "pin-source") {
		t.Fatalf("key.rotate record: %+v", rec)
	}
	eventually(t, 10*time.Second, "key.destroy of generation 0 and key.delegate under generation 1", func() bool {
		return auditHas(t, x, audit.KeyDestroy, func(e audit.Entry) bool { return e.Details["generation"] == json.Number("0") }) &&
			auditHas(t, x, audit.KeyDelegate, func(e audit.Entry) bool { return e.Details["generation"] == json.Number("1") })
	})

	// While the daemon runs, verify checks the log against the head it reports (audit.head).
	if out, code := x.run("audit", "verify"); code != 0 || !strings.Contains(out, "the agent is writing the log (its head seq") {
		t.Fatalf("audit verify while running: exit %d\n%s", code, out)
	}

	x.signal(syscall.SIGTERM)
	if code := x.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, x.logTail())
	}
	out, code = x.run("audit", "verify")
	if code != 0 || !strings.Contains(out, "checkpoints signed by key generation 0, 1") {
		t.Fatalf("audit verify: exit %d\n%s", code, out)
	}
	// Without a daemon the command writes the records itself.
	out, errOut, code = x.run2("rotate", "--grace", "1h")
	if code != 0 || strings.Contains(errOut, "running agent") {
		t.Fatalf("rotate without a daemon: exit %d\n%s\n%s", code, out, errOut)
	}
	out, code = x.run("audit", "query", "--type", "key.rotate")
	if code != 0 || strings.Count(out, "key.rotate") != 2 || !strings.Contains(out, "generation=2") || !strings.Contains(out, "source=agentctl") {
		t.Fatalf("audit query after the second rotation: %s", out)
	}
	if out, code := x.run("audit", "verify"); code != 0 || !strings.Contains(out, "generation 0, 1, 2") {
		t.Fatalf("audit verify: exit %d\n%s", code, out)
	}
}
