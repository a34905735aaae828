package e2e

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var logKeyRe = regexp.MustCompile(`(?:^| )([A-Za-z0-9_.@-]+)=`)

// TestOperatorDefects (issue 18, defects 5, 7 and 8), two daemons over tcp:
//   - 5: a dialler presenting a grant its peer refuses (signed by an agent that is not one of the peer's
//     administrators) is told the reason (grant_bad_issuer) and the remedy (agentctl grant remove ID) by
//     peers connect; after the removal it connects;
//   - 7: a SIGHUP with a configuration that does not load is logged once, in one line naming the key;
//     no log line repeats a key, and "listening" is said once per transport;
//   - 8: status shows the keystore's and the audit log's health, and after a SIGHUP that changes the
//     metrics address (a restart-only part) it names that part as waiting for a restart.
func TestOperatorDefects(t *testing.T) {
	x := newAgent(t, "responder", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {default_peer_roles: [task_submitter]}\n"})
	x.start()
	s := newAgent(t, "dialler", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: "authorization: {}\n"})
	s.start()

	// Defect 5. The dialler signs a grant for itself: it is nobody's administrator, certainly not x's.
	var g struct {
		ID string `json:"id"`
	}
	gf := s.home + "/self-grant"
	s.ctlJSON(&g, "grant", "--to", s.id, "--role", "task_submitter", "--out", gf)
	if out, code := s.run("grant", "install", gf); code != 0 {
		t.Fatalf("grant install: exit %d\n%s", code, out)
	}
	_, stderr, code := s.run2("peers", "connect", x.dialAddr("tcp"), "--id", x.id)
	if code == 0 || !strings.Contains(stderr, "grant_bad_issuer") || !strings.Contains(stderr, "agentctl grant remove "+g.ID) ||
		!strings.Contains(stderr, "authorization.admins") {
		t.Errorf("connect presenting a grant of a foreign issuer: exit %d, want the reason grant_bad_issuer and the remedy 'agentctl grant remove %s'\n%s", code, g.ID, stderr)
	}
	if out, code := s.run("grant", "remove", g.ID); code != 0 {
		t.Fatalf("grant remove: exit %d\n%s", code, out)
	}
	if out, code := s.run("peers", "connect", x.dialAddr("tcp"), "--id", x.id); code != 0 || !strings.HasPrefix(out, "connected to ") {
		t.Fatalf("connect after the grant's removal: exit %d\n%s", code, out)
	}

	// Defect 8: health in status.
	var st map[string]any
	x.ctlJSON(&st, "status")
	health, _ := st["health"].(map[string]any)
	if h, _ := health["keystore"].(map[string]any); h == nil || h["ok"] != true || h["detail"] != "file" {
		t.Errorf("status health.keystore: %v, want ok: true (status: %v)", h, st)
	}
	out, code := x.run("status")
	if code != 0 || !regexp.MustCompile(`(?m)^keystore +file \(answers\)`).MatchString(out) || !regexp.MustCompile(`(?m)^audit log +writing`).MatchString(out) {
		t.Errorf("status text without the keystore's and the audit log's health: exit %d\n%s", code, out)
	}

	// Defect 7: a reload that fails is logged once, in words.
	good := readFile(t, x.configPath())
	writeFile(t, x.configPath(), strings.Replace(good, "drain_timeout: 5s", "drain_timeout: 30", 1))
	x.signal(syscall.SIGHUP)
	eventually(t, 10*time.Second, "the refused reload in the log", func() bool {
		return strings.Contains(x.logText(), "configuration reload refused")
	})
	time.Sleep(300 * time.Millisecond)
	var refusals []string
	for _, line := range strings.Split(x.logText(), "\n") {
		if strings.Contains(line, "drain_timeout") {
			refusals = append(refusals, line)
		}
	}
	if len(refusals) != 1 || !strings.Contains(refusals[0], "limits.drain_timeout: 30 is not a duration; write it with a unit, like 30s") {
		t.Errorf("a refused reload: %d log lines, want one naming the key and the form:\n%s", len(refusals), strings.Join(refusals, "\n"))
	}

	// Defect 8: a restart-only change after a SIGHUP is named as waiting for a restart.
	writeFile(t, x.configPath(), strings.Replace(good, `metrics: {address: "127.0.0.1:0"}`, `metrics: {address: "127.0.0.1:1"}`, 1))
	x.signal(syscall.SIGHUP)
	eventually(t, 10*time.Second, "the reload", func() bool { return strings.Contains(x.logText(), `msg="configuration reloaded"`) })
	x.ctlJSON(&st, "status")
	if pending, _ := json.Marshal(st["config_pending_restart"]); string(pending) != `["metrics"]` {
		t.Errorf("status config_pending_restart %s, want [\"metrics\"] (metrics still serve at %v)", pending, st["metrics"])
	}
	if out, _ := x.run("status"); !strings.Contains(out, "waiting for a restart: metrics") {
		t.Errorf("status text does not name the change waiting for a restart:\n%s", out)
	}

	// Defect 7: each key once per log line; "listening" once per transport.
	for _, a := range []*agent{x, s} {
		text := a.logText()
		for _, line := range strings.Split(text, "\n") {
			seen := map[string]bool{}
			for _, m := range logKeyRe.FindAllStringSubmatch(line, -1) {
				if seen[m[1]] {
					t.Errorf("%s: key %s twice in: %s", a.name, m[1], line)
				}
				seen[m[1]] = true
			}
		}
		if n := strings.Count(text, "msg=listening"); n != 1 {
			t.Errorf("%s: %d \"listening\" lines, want 1 (one transport)", a.name, n)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
