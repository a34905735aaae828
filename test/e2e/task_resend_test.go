package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
)

// TestRetryRefusedAfterAcceptance: what `make soak` found. An executor's resource policy judges a repeated
// task_request like a new one; the submitter took the rate_limited answer as final, so a task the executor
// accepted (and ran, and later delivered) read "failed: rate_limited" at its submitter in between, and
// `task submit --wait` failed while the work ran. A policy refusal of a resend no longer ends an accepted
// task (agent/tasks onError). Here the
// executor allows a New peer 0.1 message/s (burst 1); the submitter's plugin is killed while the accepted
// task runs (6 s), so the new session sends the request again at once, and it is refused.
func TestRetryRefusedAfterAcceptance(t *testing.T) {
	x := newAgent(t, "x", false)
	slow := "    exec:\n      command: /bin/sh\n      args: [\"-c\", \"sleep 6; cat\"]\n      sandbox: off\n      env: [\"PATH=/usr/bin:/bin\"]\n      timeout: 30s"
	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Handlers: map[string]string{"slow": slow},
		Extra: "policy: {default: {rate: 0.2, burst: 2}}\n"})
	x.start()
	s := newAgent(t, "s", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, "tcp")}})
	s.start()
	eventually(t, 20*time.Second, "session with the executor", func() bool { return s.sessionWith(x.id) != nil })
	var v api.TaskView
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "slow", "--data", "once")
	eventually(t, 10*time.Second, "the executor to accept the task", func() bool {
		var mid api.TaskView
		s.ctlJSON(&mid, "task", "result", v.TaskID)
		return mid.State == "accepted" || mid.State == "running"
	})
	if err := syscall.Kill(s.transportStatus("tcp").PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var now api.TaskView
		s.ctlJSON(&now, "task", "result", v.TaskID)
		if now.State == "done" {
			checkResult(t, &now, x.id, "once")
			return
		}
		if now.State == "failed" {
			t.Fatalf("task %s, accepted by the executor, reads failed at its submitter: %s: %s", v.TaskID, now.ErrorCode, now.Error)
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s not done within 60 s: %s", v.TaskID, now.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
