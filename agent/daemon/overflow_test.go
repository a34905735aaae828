package daemon

import (
	"context"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/keystore"
)

// TestDurationArgsDoNotWrap: a count of seconds or milliseconds from a control request is bounded before
// it becomes a time.Duration. 18446744074+60 s is 2^64 ns plus about 60 s: multiplied into nanoseconds it
// wrapped to a 60 s grant (issue 12 item 2); 18446744073710 ms wrapped to a 0.45 ms wait.
func TestDurationArgsDoNotWrap(t *testing.T) {
	ctx := context.Background()
	_, _, _, sock := startOwnAdmin(t)
	peer := agenttest.NewIdentity(t, keystore.Ed25519).ID().String()
	const wrapSeconds = 18446744074 + 60
	const wrapMillis = 18446744073710
	cases := []struct {
		name, op string
		args     any
		phrase   string
	}{
		{"grant ttl", api.OpGrantIssue, api.GrantIssueArgs{Subject: peer, Role: "peer_node", TTLSeconds: wrapSeconds}, "--expires"},
		{"stake table ttl", api.OpStakeSign, api.StakeSignArgs{Stakes: []consensus.Stake{{Agent: peer, Amount: 1}}, TTLSeconds: wrapSeconds}, "--expires"},
		{"task.get wait", api.OpTaskGet, api.GetArgs{TaskID: "AAAAAAAAAAAAAAAAAAAAAA", WaitMS: wrapMillis}, "wait of"},
		{"task.replicate wait", api.OpTaskReplicate, api.ReplicateArgs{Handler: "sha256", Input: []byte("x"), Redundancy: 1, WaitMS: wrapMillis}, "wait of"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := control.Call(ctx, sock, c.op, c.args, nil)
			if control.CodeOf(err) != control.CodeBadRequest || !strings.Contains(err.Error(), c.phrase) {
				t.Fatalf("got %v, want %s saying %q", err, control.CodeBadRequest, c.phrase)
			}
		})
	}
}
