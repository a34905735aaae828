package rbac

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

// TestAuthorizeHeld: an agent's own acts for peers (self operations) are judged against the grants it
// holds by the rules of Authorize: a peer_node grant of one of its administrators allows running tasks and
// sending results; none, an outsider's, an expired or a revoked one is refused with the rbac reason; a
// grant naming another agent does not count; peer and control operations are not self operations.
func TestAuthorizeHeld(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	self, other := newAgent(t, keystore.Ed25519), newAgent(t, keystore.Ed25519)
	good := f.grant(t, f.admin, self.id, PeerNode, time.Hour)
	submitter := f.grant(t, f.admin, self.id, TaskSubmitter, time.Hour)
	outsider := f.grant(t, f.outsider, self.id, PeerNode, time.Hour)
	short := f.grant(t, f.admin, self.id, PeerNode, time.Minute)
	revoked := f.grant(t, f.admin, self.id, PeerNode, time.Hour)
	forOther := f.grant(t, f.admin, other.id, PeerNode, time.Hour)
	r, err := IssueRevocation(ctx, f.admin.s, f.admin.id, revoked.ID, f.clk.t)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.az.AddRevocation(ctx, r); err != nil {
		t.Fatal(err)
	}
	f.clk.t = f.clk.t.Add(2 * time.Minute) // short has expired

	for _, c := range []struct {
		name string
		held []Grant
		op   Operation
		want Reason // "" allowed
	}{
		{"peer_node of an administrator", []Grant{good}, SelfTaskExecute, ""},
		{"peer_node shares results", []Grant{good}, SelfResultSend, ""},
		{"peer_node sends feedback", []Grant{good}, SelfFeedbackSend, ""},
		{"no grant", nil, SelfTaskExecute, NoGrant},
		{"task_submitter only", []Grant{submitter}, SelfTaskExecute, PermissionDenied},
		{"signed by an outsider", []Grant{outsider}, SelfTaskExecute, GrantBadIssuer},
		{"expired", []Grant{short}, SelfResultSend, GrantExpired},
		{"revoked", []Grant{revoked}, SelfTaskExecute, GrantRevoked},
		{"another agent's grant", []Grant{forOther}, SelfTaskExecute, NoGrant},
		{"a valid one among bad ones", []Grant{short, good, outsider}, SelfTaskExecute, ""},
	} {
		err := f.az.AuthorizeHeld(ctx, self.id, c.held, c.op)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrDenied) || ReasonOf(err) != c.want {
			t.Errorf("%s: %v, want %s", c.name, err, c.want)
		}
	}
	for _, op := range []Operation{OpTaskRequest, CtlStatus} {
		if err := f.az.AuthorizeHeld(ctx, self.id, []Grant{good}, op); !errors.Is(err, ErrUnknownOperation) || !strings.Contains(err.Error(), "not a self operation") {
			t.Errorf("%s as a self operation: %v", op, err)
		}
	}
	for _, c := range []struct {
		typ string
		op  Operation
		ok  bool
	}{{"task_result", SelfResultSend, true}, {"feedback", SelfFeedbackSend, true}, {"task_response", "", false}, {"error_response", "", false}} {
		if op, ok := OutboundOp(c.typ); op != c.op || ok != c.ok {
			t.Errorf("OutboundOp(%s) = %s, %v", c.typ, op, ok)
		}
	}
}
