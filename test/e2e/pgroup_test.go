package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/audit"
)

// TestProcessGroupSIGTERMDrains: a SIGTERM that reaches more than the daemon while its handler runs drains
// exactly like a SIGTERM to the daemon alone (ADR 0088). "group" signals the executor's whole process
// group (`kill -TERM -PGID`; a terminal's Ctrl-C does the same with SIGINT): the transport plugin is in a
// process group of its own, so it keeps running until the daemon stops it. "each" signals the daemon and
// its plugin process (what systemd's KillMode=control-group does, exec handlers aside): the plugin ignores
// SIGTERM. In both, the supervisor restarts nothing during the drain, and the task's signed result reaches
// the submitter before the executor exits, without the executor's next start.
func TestProcessGroupSIGTERMDrains(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill func(daemon, plugin int) error
	}{
		{"group", func(daemon, _ int) error { return syscall.Kill(-daemon, syscall.SIGTERM) }},
		{"each", func(daemon, plugin int) error {
			if err := syscall.Kill(plugin, syscall.SIGTERM); err != nil {
				return err
			}
			return syscall.Kill(daemon, syscall.SIGTERM)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newAgent(t, "s", false)
			s.writeConfig(agentConfig{Transports: []string{"tcp"}})
			s.start()
			x := newAgent(t, "x", false)
			x.ownGroup = true // the daemon leads its own process group, as under systemd or in a terminal
			marks := filepath.Join(x.home, "marks")
			if err := os.Mkdir(marks, 0o700); err != nil {
				t.Fatal(err)
			}
			// The handler runs for 3 s, within the harness's limits.drain_timeout of 5 s.
			slow := "    exec:\n      command: /bin/sh\n      args: [\"-c\", \"touch " + marks + "/run.$$; sleep 3; sha256sum | cut -d' ' -f1\"]\n" +
				"      sandbox: off\n" + // it marks each run in a directory of the test's, outside a confined work directory
				"      env: [\"PATH=/usr/bin:/bin\"]\n      timeout: 30s"
			x.writeConfig(agentConfig{Transports: []string{"tcp"}, Handlers: map[string]string{"slow": slow}})
			x.start()
			if out, code := s.run("peers", "connect", x.dialAddr("tcp"), "--id", x.id); code != 0 {
				t.Fatalf("connect: %s", out)
			}
			daemon := x.cmd.Process.Pid
			plugin := x.transportStatus("tcp").PID
			if pg, err := syscall.Getpgid(plugin); err != nil || pg == daemon {
				t.Errorf("the tcp plugin (pid %d) is in process group %d (%v); want a group of its own, not the daemon's %d", plugin, pg, err, daemon)
			}

			in := randomInput(t, 1000)
			file := filepath.Join(s.home, "in.bin")
			if err := os.WriteFile(file, in, 0o600); err != nil {
				t.Fatal(err)
			}
			var v api.TaskView
			s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "slow", "--input", file)
			runs := func() int { e, _ := os.ReadDir(marks); return len(e) }
			eventually(t, 20*time.Second, "the slow command to start", func() bool { return runs() == 1 })

			if err := tc.kill(daemon, plugin); err != nil {
				t.Fatalf("SIGTERM: %v", err)
			}
			if code := x.waitExit(30 * time.Second); code != 0 {
				t.Fatalf("executor exit %d after the SIGTERM, want 0 (drained)\n%s", code, x.logTail())
			}
			// The executor is not started again: a result the submitter holds was delivered in the drain.
			out, errOut, _ := s.run2("task", "result", v.TaskID, "--wait", "--timeout", "10s", "--json")
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("task result: %v\n%s%s", err, out, errOut)
			}
			if v.State != "done" {
				t.Fatalf("task %s is %s at the submitter after the executor drained and exited, want done (delivered in the drain)\nexecutor log:\n%s",
					v.TaskID, v.State, x.logTail())
			}
			checkResult(t, &v, x.id, hexSHA256(in)+"\n")
			if r := runs(); r != 1 {
				t.Fatalf("the command ran %d times, want once", r)
			}
			if auditHas(t, x, audit.PluginRestarted, func(audit.Entry) bool { return true }) {
				t.Fatalf("the executor's audit log records a plugin restart during the drain\n%s", x.logTail())
			}
			if log := x.logText(); strings.Contains(log, "task interrupted by shutdown") || strings.Contains(log, "transport plugin is down") {
				t.Fatalf("executor log shows an interrupted task or a dead plugin:\n%s", x.logTail())
			}
		})
	}
}
