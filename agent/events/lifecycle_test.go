package events

import (
	"errors"
	"testing"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/audit"
)

// The lifecycle records carry the fields operators and the daemon's tests read.
func TestLifecycleRecords(t *testing.T) {
	r, query := recorder(t)
	r.ConfigLoaded("/etc/custos/agent.yaml", "d0")
	r.ConfigRefused("/etc/custos/agent.yaml", "d0", errors.New("line 3: bad"))
	r.ConfigReloaded("/etc/custos/agent.yaml", &api.ReloadResult{Digest: "d1", PreviousDigest: "d0",
		Changed: []string{"limits", "session"}, Applied: []string{"session"}, NeedRestart: []string{"limits"}})
	r.AgentStarted("ed25519:x", "v1", "pkcs11", 2, []string{"tcp", "ws"})
	r.AgentStopped("ed25519:x")
	cases := []struct {
		name  string
		typ   audit.EventType
		match func(audit.Entry) bool
	}{
		{"loaded", audit.ConfigLoaded, func(e audit.Entry) bool {
			return e.Outcome == audit.OutcomeInfo && e.Subject == "/etc/custos/agent.yaml" && e.Details["digest"] == "d0"
		}},
		{"refused", audit.ConfigChanged, func(e audit.Entry) bool {
			return e.Outcome == audit.OutcomeFailure && e.Details["digest"] == "d0" && e.Details["error"] == "line 3: bad"
		}},
		{"reloaded", audit.ConfigChanged, func(e audit.Entry) bool {
			return e.Outcome == audit.OutcomeSuccess && e.Details["digest"] == "d1" && e.Details["previous_digest"] == "d0" &&
				e.Details["changed"] == "limits,session" && e.Details["need_restart"] == "limits"
		}},
		{"started", audit.AgentStarted, func(e audit.Entry) bool {
			return e.Actor == "ed25519:x" && e.Details["version"] == "v1" && e.Details["keystore"] == "pkcs11" && e.Details["transports"] == "tcp,ws"
		}},
		{"stopped", audit.AgentStopped, func(e audit.Entry) bool { return e.Actor == "ed25519:x" && e.Subject == "ed25519:x" }},
	}
	for _, c := range cases {
		if !query(c.typ, c.match) {
			t.Errorf("%s: no %s record with the expected fields", c.name, c.typ)
		}
	}
}
