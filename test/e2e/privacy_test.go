package e2e

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/audit"
)

// auditBytes returns the raw bytes of every file in a's audit directory.
func auditBytes(t *testing.T, a *agent) string {
	t.Helper()
	var b strings.Builder
	ents, err := os.ReadDir(filepath.Join(a.home, "audit"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(a.home, "audit", e.Name()))
		if err == nil {
			b.Write(raw)
		}
	}
	return b.String()
}

// TestMinimisation (issue 16, ADR 0082): a task between two agents over TCP on loopback. With the
// default configuration neither agent's audit log nor its log holds the whole peer address (127.0.0.1),
// only its /24 (127.0.0.0/24), and neither holds the task's input or output in any form (text, hex,
// base64), though the task ran and its auth.success records name the remote network. An agent configured
// with privacy.full_addresses: true keeps the whole address.
func TestMinimisation(t *testing.T) {
	x := newAgent(t, "executor", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	s := newAgent(t, "submitter", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, "tcp")},
		Extra: "privacy: {full_addresses: true}\n"})
	s.start()

	secret := "PRIVATE-INPUT-" + hex.EncodeToString(randomInput(t, 12))
	file := filepath.Join(s.home, "input.txt")
	if err := os.WriteFile(file, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	var v api.TaskView
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "echo", "--input", file, "--wait", "--timeout", "60s")
	checkResult(t, &v, x.id, secret)
	_ = os.Remove(file)
	x.signal(syscall.SIGTERM)
	s.signal(syscall.SIGTERM)
	x.waitExit(30 * time.Second)
	s.waitExit(30 * time.Second)

	forms := []string{secret, hex.EncodeToString([]byte(secret)), base64.StdEncoding.EncodeToString([]byte(secret)),
		base64.RawURLEncoding.EncodeToString([]byte(secret)), secret[len("PRIVATE-INPUT-"):]}
	for _, a := range []*agent{x, s} {
		for where, text := range map[string]string{"audit log": auditBytes(t, a), "log": a.logText()} {
			for _, f := range forms {
				if strings.Contains(text, f) {
					t.Errorf("%s: the task input/output %q is in its %s", a.name, f, where)
				}
			}
		}
	}
	// The executor (default): truncated in both.
	if text := auditBytes(t, x) + x.logText(); strings.Contains(text, "127.0.0.1") {
		i := strings.Index(text, "127.0.0.1")
		t.Errorf("executor: a whole peer address in its audit log or log: ...%s...", text[max(0, i-200):min(len(text), i+50)])
	}
	remoteOf := func(a *agent) []string {
		var out []string
		err := audit.Query(context.Background(), filepath.Join(a.home, "audit"), audit.Filter{Types: []string{string(audit.AuthSuccess)}}, func(e audit.Entry) error {
			if r, ok := e.Record.Details["remote"].(string); ok {
				out = append(out, r)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if rs := remoteOf(x); len(rs) == 0 || !strings.HasPrefix(rs[0], "127.0.0.0/24:") {
		t.Errorf("executor auth.success remote = %q, want 127.0.0.0/24:PORT", rs)
	}
	// The submitter (full_addresses: true): whole.
	if rs := remoteOf(s); len(rs) == 0 || !strings.HasPrefix(rs[0], "127.0.0.1:") {
		t.Errorf("submitter (full_addresses) auth.success remote = %q, want 127.0.0.1:PORT", rs)
	}
	for _, a := range []*agent{x, s} {
		if out, code := a.run("audit", "verify"); code != 0 {
			t.Errorf("%s: audit verify: exit %d\n%s", a.name, code, out)
		}
	}
}
