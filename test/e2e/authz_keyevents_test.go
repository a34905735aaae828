package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

// TestAuthzGrantsAcrossAdminKeyEvents (issue 12 finding 12): an administrator (here also the executor)
// rotates its key while grants it issued are in flight: tasks under a grant of the old generation keep
// succeeding, re-installing that grant works, and a grant of the new generation works too. Then the
// administrator recovers its identity (generation 1 "lost"): the grant generation 1 signed is refused
// (grant_bad_signature, "replaced by a recovery") while the generation-0 grant still works.
// Before the fix the first submit after the rotation failed with grant_bad_signature "does not verify
// under the issuer's current key".
func TestAuthzGrantsAcrossAdminKeyEvents(t *testing.T) {
	admin, recovery := newAdminWithRecovery(t, "admin")
	admin.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {admins: [" + admin.id + "]}\n"})
	admin.start()
	s1 := newAgent(t, "submitter1", false)
	s1.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {}\n"})
	s1.start()
	s2 := newAgent(t, "submitter2", false)
	s2.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {}\n"})
	s2.start()
	for _, s := range []*agent{s1, s2} {
		if out, code := s.run("peers", "connect", admin.dialAddr("tcp"), "--id", admin.id); code != 0 {
			t.Fatalf("connect: %s", out)
		}
	}

	// Generation 0 grants s1.
	f1, g1 := issueGrant(t, admin, s1, "task_submitter", "1h", "g1.json")
	if out, code := s1.run("grant", "install", f1); code != 0 {
		t.Fatalf("grant install: exit %d\n%s", code, out)
	}
	if code, stderr := submitEcho(t, s1, admin, "before the rotation"); code != 0 {
		t.Fatalf("submit before the rotation: exit %d\n%s", code, stderr)
	}

	// A routine rotation revokes nothing.
	if out, errOut, code := admin.run2("rotate"); code != 0 || !strings.Contains(out, "to generation 1") {
		t.Fatalf("rotate: exit %d\n%s\n%s", code, out, errOut)
	}
	for i := 0; i < 3; i++ {
		if code, stderr := submitEcho(t, s1, admin, "after the rotation"); code != 0 {
			t.Fatalf("submit %d under the generation-0 grant after the rotation: exit %d\n%s\nadmin log:\n%s", i, code, stderr, admin.logTail())
		}
	}
	if out, code := s1.run("grant", "install", f1); code != 0 || !strings.Contains(out, "installed grant "+g1.ID) {
		t.Fatalf("re-installing the generation-0 grant after the rotation: exit %d\n%s", code, out)
	}
	// Generation 1 grants s2.
	f2, g2 := issueGrant(t, admin, s2, "task_submitter", "1h", "g2.json")
	if out, code := s2.run("grant", "install", f2); code != 0 {
		t.Fatalf("grant install of the generation-1 grant: exit %d\n%s", code, out)
	}
	if code, stderr := submitEcho(t, s2, admin, "generation 1 grant"); code != 0 {
		t.Fatalf("submit under the generation-1 grant: exit %d\n%s", code, stderr)
	}

	// Generation 1 is declared lost: the administrator recovers. What generation 1 signed is void.
	if out, errOut, code := admin.run2("recover", "--recovery", recovery, "--passphrase-file", filepath.Join(admin.home, "passphrase")); code != 0 || !strings.Contains(out, "generation 2 is a new key") {
		t.Fatalf("recover: exit %d\n%s\n%s", code, out, errOut)
	}
	code, stderr := submitEcho(t, s2, admin, "lost generation")
	if code != 1 || !strings.Contains(stderr, "grant_bad_signature") {
		t.Fatalf("submit under the grant of the recovered (lost) generation: exit %d, want 1 with grant_bad_signature\n%s", code, stderr)
	}
	if !auditHas(t, admin, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Actor == s2.id && e.Details["reason"] == "grant_bad_signature" && strings.Contains(e.Details["error"].(string), "replaced by a recovery")
	}) && !auditHas(t, admin, audit.AuthFailure, func(e audit.Entry) bool {
		return e.Actor == s2.id && e.Details["refusal"] == "grant_bad_signature"
	}) {
		t.Fatalf("no grant_bad_signature denial of %s (grant %s) in the administrator's audit log", s2.id, g2.ID)
	}
	if code, stderr := submitEcho(t, s1, admin, "after the recovery"); code != 0 {
		t.Fatalf("submit under the generation-0 grant after the recovery of generation 1: exit %d\n%s\nadmin log:\n%s", code, stderr, admin.logTail())
	}
}
