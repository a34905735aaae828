package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/audit"
)

// TestPluginUpdateOnReload: a new build of the tcp plugin is installed beside the old one, the
// configuration's plugin path and sha256 are changed, and SIGHUP applies it without restarting the agent:
// the reload names transports.tcp.plugin as applied, only that plugin is restarted on the new binary
// (status shows its path, checksum and a new PID; no restart and no crash counted), plugin.updated is
// audited, the submitter's session comes back and a task runs over it. A configuration pinning a
// checksum the file does not have is refused and changes nothing.
func TestPluginUpdateOnReload(t *testing.T) {
	dir := t.TempDir()
	raw, err := os.ReadFile(bins.plugins["tcp"])
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := filepath.Join(dir, "transport-tcp-1"), filepath.Join(dir, "transport-tcp-2")
	if err := os.WriteFile(v1, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v2, append(raw, 0), 0o755); err != nil { // another build: another digest
		t.Fatal(err)
	}
	x := newAgent(t, "x", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Plugin: map[string]string{"tcp": v1}})
	x.start()
	s := newAgent(t, "s", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, "tcp")}})
	s.start()
	eventually(t, 20*time.Second, "session with the executor", func() bool { return s.sessionWith(x.id) != nil })
	before := x.transportStatus("tcp")

	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Plugin: map[string]string{"tcp": v2}})
	x.signal(syscall.SIGHUP)
	eventually(t, 20*time.Second, "reload log line", func() bool { return strings.Contains(x.logText(), `msg="configuration reloaded"`) })
	line := regexp.MustCompile(`msg="configuration reloaded".*`).FindString(x.logText())
	if !strings.Contains(line, "applied=[transports.tcp.plugin]") || !strings.Contains(line, "need_restart=[]") {
		t.Fatalf("reload log line: %s", line)
	}
	after := x.transportStatus("tcp")
	if after.Plugin != v2 || after.SHA256 == before.SHA256 || after.PID == before.PID || !after.Running || after.Restarts != 0 {
		t.Fatalf("tcp after the update: %+v (before: %+v)", after, before)
	}
	eventually(t, 10*time.Second, "a plugin.updated record", func() bool {
		return auditHas(t, x, audit.PluginUpdated, func(e audit.Entry) bool {
			return e.Subject == "tcp" && e.Details["sha256"] == after.SHA256 && e.Details["previous_sha256"] == before.SHA256 && e.Details["path"] == v2
		})
	})
	if auditHas(t, x, audit.PluginCrashed, func(audit.Entry) bool { return true }) || auditHas(t, x, audit.PluginRestarted, func(audit.Entry) bool { return true }) {
		t.Fatal("an update was audited as a crash or a restart")
	}
	if m := scrape(t, x.status().Metrics); strings.Contains(m, `custos_plugin_restarts_total{plugin="tcp"} 1`) {
		t.Fatal("an update counted as a plugin restart (it would feed CustosPluginCrashLoop)")
	}
	eventually(t, 30*time.Second, "the session back after the update", func() bool { return s.sessionWith(x.id) != nil })
	var v api.TaskView
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "echo", "--data", "after the update", "--wait", "--timeout", "30s")
	checkResult(t, &v, x.id, "after the update")

	// A checksum the file does not have: the reload is refused, v2 keeps running.
	cfg, err := os.ReadFile(x.configPath())
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(cfg), after.SHA256, strings.Repeat("1", 64), 1)
	if err := os.WriteFile(x.configPath(), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	x.signal(syscall.SIGHUP)
	eventually(t, 20*time.Second, "the refused reload in the log", func() bool {
		return strings.Contains(x.logText(), "plugin checksum mismatch") && strings.Contains(x.logText(), "nothing changed")
	})
	if st := x.transportStatus("tcp"); st.PID != after.PID || st.SHA256 != after.SHA256 {
		t.Fatalf("a refused update changed the plugin: %+v", st)
	}
}
