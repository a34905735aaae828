package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/audit"
)

// TestPluginCrashAuditedWhenRestartFails: the tcp plugin's binary is replaced on disk without re-pinning
// its checksum, then the plugin is killed. Every restart is refused (checksum mismatch), yet the audit log
// has plugin.crashed for tcp at once, with the dead PID, each refused launch is plugin.start_failed
// (reason checksum_mismatch), and there is no plugin.restarted (issue 17: the crash used to be written only
// after a successful restart, and the refusals not at all).
func TestPluginCrashAuditedWhenRestartFails(t *testing.T) {
	a := newAgent(t, "a", false)
	bin := filepath.Join(t.TempDir(), "transport-tcp")
	raw, err := os.ReadFile(bins.plugins["tcp"])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	a.writeConfig(agentConfig{Transports: []string{"tcp"}, Plugin: map[string]string{"tcp": bin}})
	a.start()
	if err := os.WriteFile(bin+".new", append(raw, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	pid := a.transportStatus("tcp").PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			auditHas(t, a, audit.PluginCrashed, func(e audit.Entry) bool { t.Logf("record %+v", e.Record); return false })
			t.Logf("log:\n%s", a.logTail())
		}
	}()
	eventually(t, 20*time.Second, "a plugin.crashed record for tcp with the dead pid", func() bool {
		return auditHas(t, a, audit.PluginCrashed, func(e audit.Entry) bool {
			return e.Subject == "tcp" && fmt.Sprint(e.Details["pid"]) == strconv.Itoa(pid) && e.Outcome == audit.OutcomeFailure
		})
	})
	eventually(t, 20*time.Second, "a plugin.start_failed record (checksum_mismatch) for tcp", func() bool {
		return auditHas(t, a, audit.PluginStartFailed, func(e audit.Entry) bool {
			return e.Subject == "tcp" && e.Details["reason"] == "checksum_mismatch" && e.Details["path"] == bin
		})
	})
	time.Sleep(time.Second) // a few refused restarts
	if auditHas(t, a, audit.PluginRestarted, func(audit.Entry) bool { return true }) {
		t.Fatal("plugin.restarted although the binary no longer matches its checksum")
	}
}
