package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/keystore"
)

func TestAuthzConfigErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"bad admin", "authorization: {admins: [nope]}\n", "authorization.admins[0]"},
		{"admin twice", "authorization: {admins: [" + testID(t) + ", " + testID(t) + "]}\n", ""},
		{"unknown default role", "authorization: {default_peer_roles: [root]}\n", "authorization.default_peer_roles: unknown role \"root\""},
		{"relative roles file", "authorization: {roles_file: roles.yaml}\n", "authorization.roles_file: \"roles.yaml\" must be a clean absolute path"},
		{"missing roles file", "authorization: {roles_file: /nonexistent/roles.yaml}\n", "authorization.roles_file"},
		{"unknown local user", "authorization: {local: {users: {no-such-user-here: [agent_operator]}}}\n", "authorization.local"},
		{"unknown enforce family", "authorization: {enforce: {everything: false}}\n", "authorization.enforce.everything: unknown key"},
		{"policy log_only", "policy: {log_only: {rate: true}}\n", "policy.log_only: set log-only mode with authorization.enforce"},
		{"geo without database", "policy: {geo: {deny: [FR]}}\n", "policy.geo.database: the geo rules need"},
		{"bad country", "policy: {geo: {database: /x.mmdb, deny: [fr]}}\n", "policy.geo.deny: \"fr\" is not an ISO 3166-1"},
		{"negative rate", "policy: {default: {rate: -1}}\n", "policy.default.rate"},
		{"bad window", "policy: {default: {time_window: {hours: [\"9-17\"]}}}\n", "policy.default.time_window.hours"},
		{"thresholds out of order", "reputation: {thresholds: {trusted_enter: 0.3}}\n", "reputation: thresholds must satisfy"},
		{"half-life too short", "reputation: {half_life: 1s}\n", "reputation.half_life"},
		{"puzzle too hard", "puzzles: {new_bits: 40}\n", "puzzles.new_bits: 40 exceeds 32 bits"},
		{"puzzle ttl", "puzzles: {ttl: 10h}\n", "puzzles.ttl"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.yaml))
			if c.want == "" {
				c.want = "listed twice"
				if !strings.Contains(c.yaml, "admins") {
					t.Fatal("bad case")
				}
				// Two different IDs are fine; the same one twice is not.
				id := testID(t)
				_, err = ParseConfig([]byte("authorization: {admins: [" + id + ", " + id + "]}\n"))
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want ErrConfig naming %q", err, c.want)
			}
		})
	}
}

func testID(t *testing.T) string { return agenttest.NewIdentity(t, keystore.Ed25519).ID().String() }

func TestAuthzConfigValues(t *testing.T) {
	dir := t.TempDir()
	roles := filepath.Join(dir, "roles.yaml")
	// An operator who moves submit_tasks from task_submitter to peer_node.
	if err := os.WriteFile(roles, []byte("roles:\n  system_admin: [manage_agents, manage_network, manage_security, view_metrics]\n"+
		"  agent_operator: [view_status, manage_local_agent]\n  task_submitter: [view_results]\n"+
		"  peer_node: [process_tasks, share_results, discover_peers, submit_tasks]\n  gateway_service: [api_access, rate_limiting, protocol_translation]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	admin := testID(t)
	c, err := ParseConfig([]byte(fmt.Sprintf(`authorization:
  admins: [%s]
  roles_file: %s
  default_peer_roles: [peer_node]
  enforce: {rate: false, geo: false}
policy: {default: {rate: 10, burst: 15}}
reputation: {thresholds: {blocked_enter: 0.1}, min_evidence: {trusted: 3}}
puzzles: {new_bits: 12, restricted_bits: 18}
`, admin, roles)))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.RBACConfig(4242)
	if err != nil {
		t.Fatal(err)
	}
	if len(rc.Admins) != 1 || rc.Admins[0].String() != admin || !rc.Roles.Has(rbac.PeerNode, rbac.SubmitTasks) || rc.Roles.Has(rbac.TaskSubmitter, rbac.SubmitTasks) {
		t.Fatalf("rbac config: %+v", rc)
	}
	// Without authorization.local the daemon's own uid and root hold every role; others none.
	if got := rc.Local.RolesFor(rbac.Cred{UID: 4242}); len(got) != len(rbac.AllRoles) {
		t.Fatalf("own uid roles %v", got)
	}
	if got := rc.Local.RolesFor(rbac.Cred{UID: 0}); len(got) != len(rbac.AllRoles) {
		t.Fatalf("root roles %v", got)
	}
	if got := rc.Local.RolesFor(rbac.Cred{UID: 4243, GID: 4243}); len(got) != 0 {
		t.Fatalf("another uid holds %v", got)
	}
	pc, err := c.PolicyConfig()
	if err != nil || !pc.LogOnly.Rate || !pc.LogOnly.Geo || pc.LogOnly.Quota || pc.LogOnly.TimeWindow || pc.Default.Rate != 10 {
		t.Fatalf("policy config: %+v %v", pc, err)
	}
	repc, err := c.ReputationSettings()
	if err != nil || repc.Thresholds.BlockedEnter != 0.1 || repc.Thresholds.TrustedEnter != reputation.DefaultThresholds().TrustedEnter ||
		repc.MinEvidence.Trusted != 3 || repc.MinEvidence.Blocked != reputation.DefaultMinEvidence().Blocked ||
		repc.Effects[reputation.New].PuzzleBits != 12 || repc.Effects[reputation.Restricted].PuzzleBits != 18 || repc.Effects[reputation.Trusted].PuzzleBits != 0 {
		t.Fatalf("reputation config: %+v %v", repc, err)
	}
	if c.Reputation.SweepInterval != DefaultSweepInterval || c.Puzzles.TTL != DefaultPuzzleTTL {
		t.Fatalf("defaults: %+v %+v", c.Reputation, c.Puzzles)
	}
	// The example configuration's authorization sections decode and validate.
	if _, _, err := LoadConfig(filepath.Join("..", "..", "configs", "agent.example.yaml")); err != nil {
		t.Fatalf("configs/agent.example.yaml: %v", err)
	}
}
