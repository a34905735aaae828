package peerops

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/reason"
)

func TestAdvice(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	one := []rbac.Grant{{ID: "g1", Issuer: "ed25519:foreign", Role: "task_submitter", Expires: now.Unix() + 3600}}
	two := append([]rbac.Grant{{ID: "g0", Issuer: "ed25519:admin", Role: "peer_node", Expires: now.Unix() - 1}}, one...)
	alert := func(c reason.Code) error {
		return reason.Wrap(reason.PeerAlert, reason.FromPeerCode(c), "the peer refused the handshake")
	}
	cases := []struct {
		name string
		err  error
		held []rbac.Grant
		want []string
	}{
		{"foreign admin", alert(reason.GrantBadIssuer), one, []string{"not one of its authorization.admins", "agentctl grant remove g1", "ed25519:foreign"}},
		{"revoked, two held", alert(reason.GrantRevoked), two, []string{"revoked", "agentctl grant remove GRANT_ID", "g0, g1"}},
		{"bad signature", alert(reason.GrantBadSignature), one, []string{"does not verify", "agentctl grant remove g1"}},
		{"expired names the expired one", alert(reason.GrantExpired), two, []string{"expired", "agentctl grant remove g0"}},
		{"none held", alert(reason.GrantRevoked), nil, []string{"agentctl grant list", "agentctl grant remove GRANT_ID"}},
		{"collapsed", alert(reason.ValidatorRefused), one, []string{"does not say which"}},
		{"not a peer's refusal", reason.New(reason.Timeout, "x"), one, nil},
		{"a local refusal", errors.New("grant_revoked"), one, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Advice(c.err, c.held, now)
			if c.want == nil && got != "" {
				t.Fatalf("advice %q, want none", got)
			}
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("advice %q does not say %q", got, w)
				}
			}
		})
	}
	if got := Advice(alert(reason.GrantExpired), two, now); strings.Contains(got, "g1") {
		t.Errorf("expired: %q names the valid grant g1", got)
	}
}
