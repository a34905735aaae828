package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
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
	"github.com/custos-agent/custos/identity"
)

func randomInput(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// submitSHA256 submits a sha256 task from s to x with --wait and checks the signed result.
func submitSHA256(t *testing.T, s, x *agent) api.TaskView {
	t.Helper()
	in := randomInput(t, 4096)
	file := filepath.Join(s.home, "input.bin")
	if err := os.WriteFile(file, in, 0o600); err != nil {
		t.Fatal(err)
	}
	var v api.TaskView
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "sha256", "--input", file, "--wait", "--timeout", "60s")
	checkResult(t, &v, x.id, hexSHA256(in))
	return v
}

func checkResult(t *testing.T, v *api.TaskView, executor, wantOutput string) {
	t.Helper()
	if v.State != "done" || v.Result == nil {
		t.Fatalf("task %s: state %s (%s: %s), want done with a result", v.TaskID, v.State, v.ErrorCode, v.Error)
	}
	r := v.Result
	if r.Status != "ok" || string(r.Output) != wantOutput {
		t.Fatalf("task %s: status %s output %q, want ok %q", v.TaskID, r.Status, r.Output, wantOutput)
	}
	if r.Executor != executor || !r.Verified || len(r.Signature) == 0 || r.OutputSHA256 != hexSHA256(r.Output) {
		t.Fatalf("task %s: result not attributed or not signed: %+v", v.TaskID, r)
	}
}

// TestTasksOverEachTransport: a SoftHSM-backed executor listens on every transport; one submitter per
// transport dials it over that transport only; each submits a sha256 task and gets the right, signed,
// third-party-verifiable result over a session of that transport.
func TestTasksOverEachTransport(t *testing.T) {
	tns := []string{"tcp", "ws", "libp2p"}
	for _, tn := range tns {
		needPlugin(t, tn)
	}
	x := newAgent(t, "executor", true) // identity key on a SoftHSM token
	x.writeConfig(agentConfig{Transports: tns})
	x.start()
	st := x.status()
	if st.AgentID != x.id || st.Generation != 0 || st.Keystore != "pkcs11" || len(st.Transports) != len(tns) {
		t.Fatalf("executor status: %+v", st)
	}
	for _, tr := range st.Transports {
		if !tr.Running || tr.PID == 0 || len(tr.Listen) == 0 {
			t.Fatalf("transport %s not running/listening: %+v", tr.Name, tr)
		}
		if tr.Name == "libp2p" && !strings.Contains(tr.Listen[0], "/p2p/") {
			t.Fatalf("libp2p listen address %q lacks /p2p/<peer id>", tr.Listen[0])
		}
	}
	for _, tn := range tns {
		t.Run(tn, func(t *testing.T) {
			s := newAgent(t, "submitter-"+tn, false)
			s.writeConfig(agentConfig{Transports: []string{tn}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, tn)}})
			s.start()
			v := submitSHA256(t, s, x)
			sess := s.sessionWith(x.id)
			if sess == nil || sess.Transport != tn || sess.Role != "initiator" {
				t.Fatalf("session with the executor: %+v, want an initiator session over %s", sess, tn)
			}
			// A third party checks the printed evidence with nothing but the file.
			raw, _ := json.Marshal(v)
			file := filepath.Join(s.home, "result.json")
			if err := os.WriteFile(file, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			out, code := s.run("task", "verify", file)
			if code != 0 || !strings.Contains(out, "ok: task "+v.TaskID+" was run by "+x.id) || !strings.Contains(out, v.Result.OutputSHA256) {
				t.Fatalf("task verify: exit %d\n%s", code, out)
			}
			// The same evidence with the output changed does not verify.
			v.Result.Evidence.Envelope = strings.Replace(v.Result.Evidence.Envelope, `"message_type":"task_result"`, `"message_type":"task_response"`, 1)
			raw, _ = json.Marshal(v)
			_ = os.WriteFile(file, raw, 0o600)
			if out, code := s.run("task", "verify", file); code != 1 || !strings.Contains(out, "invalid task result") {
				t.Fatalf("altered evidence: exit %d\n%s", code, out)
			}
			var ps []api.PeerStatus
			s.ctlJSON(&ps, "peers")
			if len(ps) != 1 || ps[0].ID != x.id || !ps[0].Connected || ps[0].Generation == nil || ps[0].Target == nil || ps[0].Target.Source != "bootstrap" {
				t.Fatalf("peers: %+v", ps)
			}
		})
	}
}

// TestWrongExpectedIDRefused: dialling an agent while expecting another agent ID is refused, naming
// both, and the refusal is in the audit log.
func TestWrongExpectedIDRefused(t *testing.T) {
	x := newAgent(t, "x", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	other := newAgent(t, "other", false) // never runs: only its ID is used
	s := newAgent(t, "s", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}})
	s.start()
	_, stderr, code := s.run2("peers", "connect", x.dialAddr("tcp"), "--id", other.id)
	if code != 1 {
		t.Fatalf("connect with the wrong ID: exit %d, want 1\n%s", code, stderr)
	}
	for _, want := range []string{"peer is not the expected agent", "it is " + x.id, "expected " + other.id} {
		if !strings.Contains(stderr, want) {
			t.Fatalf("refusal %q does not say %q", stderr, want)
		}
	}
	if sess := s.sessionWith(x.id); sess != nil {
		t.Fatalf("a session exists after the refusal: %+v", sess)
	}
	eventually(t, 10*time.Second, "an auth.failure record with reason peer_mismatch naming the expected ID", func() bool {
		return auditHas(t, s, audit.AuthFailure, func(e audit.Entry) bool {
			msg, _ := e.Details["error"].(string)
			return e.Details["reason"] == "peer_mismatch" && strings.Contains(msg, other.id)
		})
	})
	// The right ID connects.
	out, code := s.run("peers", "connect", x.dialAddr("tcp"), "--id", x.id)
	if code != 0 || !strings.Contains(out, "connected to "+x.id+" over tcp") {
		t.Fatalf("connect with the right ID: exit %d\n%s", code, out)
	}
	// A malformed ID is a usage-level refusal from the daemon, not a dial.
	if _, stderr, code := s.run2("peers", "connect", x.dialAddr("tcp"), "--id", "ed25519:nope"); code != 1 || !strings.Contains(stderr, "--id") {
		t.Fatalf("malformed --id: exit %d %s", code, stderr)
	}
}

// TestPluginKilledTaskDeliveredAfterRestart: the submitter's transport plugin is killed with SIGKILL; a
// task submitted right then is delivered once the supervisor has restarted the plugin and the session is
// re-established.
func TestPluginKilledTaskDeliveredAfterRestart(t *testing.T) {
	x := newAgent(t, "x", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	s := newAgent(t, "s", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, "tcp")}})
	s.start()
	eventually(t, 20*time.Second, "session with the executor", func() bool { return s.sessionWith(x.id) != nil })
	before := s.transportStatus("tcp")
	if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	in := []byte("submitted while the plugin is down")
	var v api.TaskView
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "echo", "--data", string(in))
	if v.State != "pending" {
		t.Fatalf("state at submission %s", v.State)
	}
	s.ctlJSON(&v, "task", "result", v.TaskID, "--wait", "--timeout", "60s")
	checkResult(t, &v, x.id, string(in))
	after := s.transportStatus("tcp")
	if after.Restarts < 1 || after.PID == before.PID || !after.Running {
		t.Fatalf("plugin after SIGKILL: %+v (before: pid %d)", after, before.PID)
	}
	if !strings.Contains(s.logText(), "transport plugin restarted") {
		t.Fatalf("no restart in the daemon log:\n%s", s.logTail())
	}
	eventually(t, 10*time.Second, "a plugin.restarted record for tcp", func() bool {
		return auditHas(t, s, audit.PluginRestarted, func(e audit.Entry) bool { return e.Subject == "tcp" })
	})
	metrics := scrape(t, s.status().Metrics)
	for _, want := range []string{`custos_plugin_restarts_total{plugin="tcp"} 1`, `custos_sessions_active{transport="tcp"} 1`,
		`custos_auth_attempts_total{reason="",result="success"}`} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %s:\n%s", want, metrics)
		}
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// TestWrongPluginChecksumRefused: a plugin whose digest differs from the configuration is never run; the
// daemon does not start and says which file.
func TestWrongPluginChecksumRefused(t *testing.T) {
	a := newAgent(t, "a", false)
	a.writeConfig(agentConfig{Transports: []string{"tcp"}, BadSum: "tcp"})
	a.startProcess()
	if code := a.waitExit(30 * time.Second); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, a.logText())
	}
	log := a.logText()
	for _, want := range []string{"transport tcp: plugin " + bins.plugins["tcp"], "plugin checksum mismatch", "the configuration says " + strings.Repeat("0", 64)} {
		if !strings.Contains(log, want) {
			t.Fatalf("error output does not say %q:\n%s", want, log)
		}
	}
	if _, err := os.Stat(filepath.Join(a.home, api.ControlFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("control socket exists after a refused start: %v", err)
	}
}

// TestDaemonKilledMidTaskLosesNothing: the executor is killed with SIGKILL while its exec handler runs a
// slow command; restarted, it runs the accepted task again and the submitter gets the result.
func TestDaemonKilledMidTaskLosesNothing(t *testing.T) {
	s := newAgent(t, "s", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}})
	s.start()
	x := newAgent(t, "x", false)
	marks := filepath.Join(x.home, "marks")
	if err := os.Mkdir(marks, 0o700); err != nil {
		t.Fatal(err)
	}
	slow := "    exec:\n      command: /bin/sh\n      args: [\"-c\", \"touch " + marks + "/run.$$; sleep 2; sha256sum | cut -d' ' -f1\"]\n" +
		"      sandbox: off\n" + // it marks each run in a directory of the test's, outside a confined work directory
		"      env: [\"PATH=/usr/bin:/bin\"]\n      timeout: 30s"
	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Handlers: map[string]string{"slow": slow}})
	x.start()
	if out, code := s.run("peers", "connect", x.dialAddr("tcp"), "--id", x.id); code != 0 {
		t.Fatalf("connect: %s", out)
	}
	in := randomInput(t, 1000)
	file := filepath.Join(s.home, "in.bin")
	_ = os.WriteFile(file, in, 0o600)
	var v api.TaskView
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "slow", "--input", file)
	runs := func() int { e, _ := os.ReadDir(marks); return len(e) }
	eventually(t, 20*time.Second, "the slow command to start", func() bool { return runs() == 1 })
	eventually(t, 10*time.Second, "the submitter to see the task acknowledged", func() bool {
		var mid api.TaskView
		s.ctlJSON(&mid, "task", "result", v.TaskID)
		return mid.State == "accepted" || mid.State == "running"
	})
	x.signal(syscall.SIGKILL)
	if code := x.waitExit(10 * time.Second); code != -int(syscall.SIGKILL) {
		t.Fatalf("executor exit %d, want killed", code)
	}
	x.start() // same home, same port: the submitter re-dials it (peers connect made it a target)
	s.ctlJSON(&v, "task", "result", v.TaskID, "--wait", "--timeout", "60s")
	checkResult(t, &v, x.id, hexSHA256(in)+"\n")
	if r := runs(); r != 2 {
		t.Fatalf("the command ran %d times, want 2 (once before the crash, once after the restart)", r)
	}
	if !strings.Contains(x.logText(), "resuming a task accepted before the restart") {
		t.Fatalf("executor log does not show the resumed task:\n%s", x.logTail())
	}
}

// TestSignals: SIGHUP reloads the configuration (a new handler becomes usable; the change is logged and
// audited with both digests); SIGTERM drains and exits 0 with a sealed audit log.
func TestSignals(t *testing.T) {
	x := newAgent(t, "x", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	s := newAgent(t, "s", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, "tcp")},
		Extra: "session: {reauth_interval: 1s, sign_envelopes: true}\n"}) // its envelopes signed, the other side's not
	s.start()
	digest0 := x.status().ConfigDigest

	// A handler the executor does not have yet: refused.
	_, stderr, code := s.run2("task", "submit", "--to", x.id, "--handler", "rev", "--data", "abc", "--wait", "--timeout", "30s")
	if code != 1 || !strings.Contains(stderr, "unknown_handler") {
		t.Fatalf("unknown handler: exit %d %s", code, stderr)
	}
	rev := "    exec:\n      command: /usr/bin/rev\n      timeout: 10s"
	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Handlers: map[string]string{"rev": rev}})
	x.signal(syscall.SIGHUP)
	eventually(t, 10*time.Second, "reload log line", func() bool { return strings.Contains(x.logText(), `msg="configuration reloaded"`) })
	line := regexp.MustCompile(`msg="configuration reloaded".*`).FindString(x.logText())
	if !strings.Contains(line, "changed=[handlers.rev]") || !strings.Contains(line, "previous_digest="+digest0) {
		t.Fatalf("reload log line: %s", line)
	}
	digest1 := x.status().ConfigDigest
	if digest1 == digest0 {
		t.Fatal("status shows the old configuration digest after the reload")
	}
	var v api.TaskView
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "rev", "--data", "abc", "--wait", "--timeout", "30s")
	checkResult(t, &v, x.id, "cba")
	if v.Result.DelegationGeneration != 0 {
		t.Fatalf("result signed under generation %d, want 0", v.Result.DelegationGeneration)
	}

	// Rotation while the daemon runs (agentctl rotate is another process), picked up by SIGHUP: the
	// sessions re-authenticate at once, results are signed under the new generation, and the peer learns
	// the longer key event log.
	if out, code := x.run("rotate"); code != 0 || !strings.Contains(out, "to generation 1") {
		t.Fatalf("rotate: exit %d\n%s", code, out)
	}
	x.signal(syscall.SIGHUP)
	eventually(t, 10*time.Second, "identity reload", func() bool { return strings.Contains(x.logText(), `msg="identity reloaded" generation=1 previous=0`) })
	if g := x.status().Generation; g != 1 {
		t.Fatalf("status generation %d after rotate+SIGHUP", g)
	}
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "sha256", "--data", "after rotation", "--wait", "--timeout", "30s")
	checkResult(t, &v, x.id, hexSHA256([]byte("after rotation")))
	if v.Result.DelegationGeneration != 1 {
		t.Fatalf("result after the rotation signed under generation %d, want 1", v.Result.DelegationGeneration)
	}
	var ps []api.PeerStatus
	s.ctlJSON(&ps, "peers")
	if len(ps) != 1 || ps[0].Generation == nil || *ps[0].Generation != 1 {
		t.Fatalf("the submitter's view of the executor after its rotation: %+v", ps)
	}
	// The submitter re-authenticates its session every second (session.reauth_interval: 1s) on its own:
	// three more re-authentications than it has recorded so far, which include the one the executor's
	// rotation asked for, so the timer is what this counts (with it off, the count stays put).
	reauths := func() int {
		return auditCount(t, s, audit.AuthSuccess, func(e audit.Entry) bool { return e.Details["kind"] == "reauth" })
	}
	n0 := reauths()
	eventually(t, 30*time.Second, "three re-authentications of the submitter's timer", func() bool { return reauths() >= n0+3 })

	x.signal(syscall.SIGTERM)
	if code := x.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d, want 0\n%s", code, x.logTail())
	}
	if _, err := os.Stat(filepath.Join(x.home, api.ControlFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("control socket left behind: %v", err)
	}
	kel, err := os.ReadFile(filepath.Join(x.home, "kel.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	log, err := identity.DecodeLog(kel)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(filepath.Join(x.home, "audit"), log)
	if err != nil || !rep.Sealed {
		t.Fatalf("audit log after SIGTERM: %+v %v (want verified and sealed)", rep, err)
	}
	var changed bool
	_ = audit.Query(context.Background(), filepath.Join(x.home, "audit"), audit.Filter{Types: []string{string(audit.ConfigChanged)}}, func(e audit.Entry) error {
		changed = changed || (e.Details["digest"] == digest1 && e.Details["previous_digest"] == digest0 && e.Details["changed"] == "handlers.rev")
		return nil
	})
	if !changed {
		t.Fatal("no config.changed audit record with both digests")
	}
	// The peer notices and keeps trying to re-dial.
	eventually(t, 10*time.Second, "the submitter to lose its session", func() bool { return s.sessionWith(x.id) == nil })
}

// auditHas reports whether a's audit log holds a record of type typ that match accepts.
// auditCount counts a's audit records of type typ that match.
func auditCount(t *testing.T, a *agent, typ audit.EventType, match func(audit.Entry) bool) int {
	t.Helper()
	n := 0
	err := audit.Query(context.Background(), filepath.Join(a.home, "audit"), audit.Filter{Types: []string{string(typ)}}, func(e audit.Entry) error {
		if match(e) {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: audit query: %v", a.name, err)
	}
	return n
}

func auditHas(t *testing.T, a *agent, typ audit.EventType, match func(audit.Entry) bool) bool {
	t.Helper()
	found := false
	err := audit.Query(context.Background(), filepath.Join(a.home, "audit"), audit.Filter{Types: []string{string(typ)}}, func(e audit.Entry) error {
		found = found || match(e)
		return nil
	})
	if err != nil {
		t.Fatalf("%s: audit query: %v", a.name, err)
	}
	return found
}
