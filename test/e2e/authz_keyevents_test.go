package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/audit"
)

// newAdminWithRecovery makes an identity with software keys and an offline recovery key (file: keystore
// in its own directory), like newAgent does without one. It returns the agent and the recovery URI.
func newAdminWithRecovery(t *testing.T, name string) (*agent, string) {
	t.Helper()
	home, err := os.MkdirTemp("", "cx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	a := &agent{t: t, name: name, home: home, ports: map[string]int{}, logPath: filepath.Join(home, "daemon.log")}
	pass := filepath.Join(home, "passphrase")
	if err := os.WriteFile(pass, []byte("correct horse "+name+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	offline := filepath.Join(home, "offline")
	if out, code := a.run("init", "--software", "--passphrase-file", pass, "--work-factor", "10", "--recovery", "file:"+offline+"?work-factor=10"); code != 0 {
		t.Fatalf("%s: agentctl init: exit %d\n%s", name, code, out)
	}
	out, _, code := a.run2("id", "--json")
	var id struct {
		ID string `json:"id"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &id) != nil || id.ID == "" {
		t.Fatalf("%s: agentctl id --json: %s", name, out)
	}
	a.id = id.ID
	t.Cleanup(a.kill)
	return a, "file:" + offline
}

// TestAuthzGrantsAcrossAdminKeyEvents (issue 12 findings 12 and 5): an administrator (also an executor)
// rotates its key while grants it issued are in flight: tasks under a grant of the old generation keep
// succeeding, on the administrator and on an executor X that never met it; re-installing that grant
// works; a grant of the new generation works on X too (its file carries the administrator's key event
// log, which the holder presents with it at the handshake). Then the administrator recovers its identity
// (generation 1 "lost"): the grant generation 1 signed is refused (grant_bad_signature, "replaced by a
// recovery") on the administrator, and on X once X learns of the recovery from a newer grant's log; the
// generation-0 grant still works everywhere.
// Before the fix the first submit after the rotation failed with grant_bad_signature "does not verify
// under the issuer's current key".
func TestAuthzGrantsAcrossAdminKeyEvents(t *testing.T) {
	admin, recovery := newAdminWithRecovery(t, "admin")
	admin.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {admins: [" + admin.id + "]}\n"})
	admin.start()
	x := newAgent(t, "executor", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {admins: [" + admin.id + "]}\n"})
	x.start()
	s1 := newAgent(t, "submitter1", false)
	s1.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {}\n"})
	s1.start()
	s2 := newAgent(t, "submitter2", false)
	s2.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {}\n"})
	s2.start()
	for _, s := range []*agent{s1, s2} {
		for _, to := range []*agent{admin, x} {
			if out, code := s.run("peers", "connect", to.dialAddr("tcp"), "--id", to.id); code != 0 {
				t.Fatalf("connect: %s", out)
			}
		}
	}
	submitOK := func(s, to *agent, what string) {
		t.Helper()
		if code, stderr := submitEcho(t, s, to, what); code != 0 {
			t.Fatalf("%s: submit from %s to %s: exit %d\n%s\n%s log:\n%s", what, s.name, to.name, code, stderr, to.name, to.logTail())
		}
	}
	badSignature := func(s, to *agent, what string) {
		t.Helper()
		code, stderr := submitEcho(t, s, to, what)
		if code != 1 {
			t.Fatalf("%s: submit from %s to %s: exit %d, want 1\n%s", what, s.name, to.name, code, stderr)
		}
		eventually(t, 10*time.Second, what+": a grant_bad_signature denial (replaced by a recovery) in "+to.name+"'s audit log", func() bool {
			return auditHas(t, to, audit.AccessDenied, func(e audit.Entry) bool {
				return e.Actor == s.id && e.Details["reason"] == "grant_bad_signature" && strings.Contains(fmt.Sprint(e.Details["error"]), "replaced by a recovery")
			}) || auditHas(t, to, audit.AuthFailure, func(e audit.Entry) bool {
				return e.Actor == s.id && e.Details["refusal"] == "grant_bad_signature"
			})
		})
	}

	// Generation 0 grants s1.
	f1, g1 := issueGrant(t, admin, s1, "task_submitter", "1h", "g1.json")
	if out, code := s1.run("grant", "install", f1); code != 0 {
		t.Fatalf("grant install: exit %d\n%s", code, out)
	}
	submitOK(s1, admin, "before the rotation")
	submitOK(s1, x, "before the rotation")

	// A routine rotation revokes nothing.
	if out, errOut, code := admin.run2("rotate"); code != 0 || !strings.Contains(out, "to generation 1") {
		t.Fatalf("rotate: exit %d\n%s\n%s", code, out, errOut)
	}
	for i := 0; i < 3; i++ {
		submitOK(s1, admin, fmt.Sprintf("after the rotation (%d)", i))
		submitOK(s1, x, fmt.Sprintf("after the rotation (%d)", i))
	}
	if out, code := s1.run("grant", "install", f1); code != 0 || !strings.Contains(out, "installed grant "+g1.ID) {
		t.Fatalf("re-installing the generation-0 grant after the rotation: exit %d\n%s", code, out)
	}
	// Generation 1 grants s2: the file carries the administrator's log, s2 presents it to X.
	f2, g2 := issueGrant(t, admin, s2, "task_submitter", "1h", "g2.json")
	if b, _ := os.ReadFile(f2); strings.Count(string(b), "\n") != 3 {
		t.Fatalf("the generation-1 grant file holds %d lines, want the grant and the 2 events of the issuer's log:\n%s", strings.Count(string(b), "\n"), b)
	}
	if out, code := s2.run("grant", "install", f2); code != 0 || !strings.Contains(out, "presented to "+x.id) {
		t.Fatalf("grant install of the generation-1 grant: exit %d\n%s", code, out)
	}
	submitOK(s2, admin, "generation 1 grant")
	submitOK(s2, x, "generation 1 grant, on an executor that never met the administrator")

	// Generation 1 is declared lost: the administrator recovers. What generation 1 signed is void.
	if out, errOut, code := admin.run2("recover", "--recovery", recovery, "--passphrase-file", filepath.Join(admin.home, "passphrase")); code != 0 || !strings.Contains(out, "generation 2 is a new key") {
		t.Fatalf("recover: exit %d\n%s\n%s", code, out, errOut)
	}
	badSignature(s2, admin, "the grant of the lost generation 1 on the administrator")
	submitOK(s1, admin, "the generation-0 grant after the recovery of generation 1")

	// X learns of the recovery from a generation-2 grant's log (presented by s1), then refuses g2 too.
	f3, _ := issueGrant(t, admin, s1, "task_submitter", "1h", "g3.json")
	if out, code := s1.run("grant", "install", f3); code != 0 || !strings.Contains(out, "presented to "+x.id) {
		t.Fatalf("grant install of the generation-2 grant: exit %d\n%s", code, out)
	}
	badSignature(s2, x, "the grant of the lost generation 1 on X, after it learnt of the recovery")
	submitOK(s1, x, "the generation-0 and generation-2 grants after the recovery")
	t.Logf("grant %s (generation 1) refused after the recovery; grant %s (generation 0) still valid", g2.ID, g1.ID)
}
