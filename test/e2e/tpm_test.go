package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// TestTPMRotateRecoverWhileRunning (issue 12.14): an agent whose identity is in swtpm (no resource
// manager, three transient object slots) runs; agentctl rotates twice and recovers while it does, each
// at the first try and without undoing anything; the running agent picks up every generation and signs
// its delegations (and its audit checkpoints) with it, and the audit log verifies with checkpoints of
// every generation.
func TestTPMRotateRecoverWhileRunning(t *testing.T) {
	sim := swtpmtest.Start(t)
	x := newAgentWith(t, "tpm", func(a *agent) []string {
		a.env = []string{"CUSTOS_TPM_DEVICE=" + sim.Device()}
		pass := filepath.Join(a.home, "recovery-pass")
		if err := os.WriteFile(pass, []byte("offline recovery passphrase\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"init", "--tpm", "--recovery", "file:" + filepath.Join(a.home, "offline") + "?work-factor=10", "--passphrase-file", pass}
	})
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	s := newAgent(t, "submitter", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, "tcp")}})
	s.start()
	if v := submitSHA256(t, s, x); v.Result.DelegationGeneration != 0 {
		t.Fatalf("before the rotation: signed under generation %d", v.Result.DelegationGeneration)
	}

	step := func(gen uint64, args ...string) {
		t.Helper()
		out, errOut, code := x.run2(args...)
		if code != 0 || strings.Contains(errOut, "interrupted operation") || strings.Contains(errOut, "OBJECT_MEMORY") {
			t.Fatalf("agentctl %v with the agent running: exit %d\n%s\n%s\ndaemon log:\n%s", args, code, out, errOut, x.logTail())
		}
		if g := x.status().Generation; g != gen {
			t.Fatalf("status generation %d after agentctl %v, want %d", g, args, gen)
		}
		if v := submitSHA256(t, s, x); v.Result.DelegationGeneration != gen {
			t.Fatalf("after agentctl %v: signed under generation %d, want %d", args, v.Result.DelegationGeneration, gen)
		}
	}
	step(1, "rotate", "--destroy-old")
	step(2, "rotate", "--grace", "1h")
	step(3, "recover", "--passphrase-file", filepath.Join(x.home, "recovery-pass"))
	eventually(t, 10*time.Second, "key.recover and key.delegate under generation 3", func() bool {
		return auditHas(t, x, audit.KeyDelegate, func(e audit.Entry) bool { return e.Details["generation"] == json.Number("3") })
	})

	x.signal(syscall.SIGTERM)
	if code := x.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, x.logTail())
	}
	out, code := x.run("audit", "verify")
	if code != 0 || !regexp.MustCompile(`checkpoints signed by key generation 0(, [12])*, 3\n`).MatchString(out) {
		t.Fatalf("audit verify: exit %d\n%s", code, out)
	}
	if hs := sim.TransientHandles(); len(hs) != 0 {
		t.Fatalf("transient objects left in swtpm after the agent stopped: %x", hs)
	}
}
