package session

import (
	"context"
	"errors"
	"testing"

	"github.com/custos-agent/custos/reason"
)

// coded is a validator refusal that carries its code, as agent/authz's refusals do.
type coded struct{ code reason.Code }

func (c coded) Error() string            { return string(c.code) + ": the detail stays in the responder's log" }
func (c coded) RefusalCode() reason.Code { return c.code }

// TestRefusalAlertNamesThePresentedGrant (issue 18, defect 5; ADR 0087): when the responder's validator
// refuses the grants the initiator presented, the alert names the refusal (one of
// reason.HandshakeRefusalAlerts), so the initiator can say what to do; every other refusal (a Blocked
// trust level, the resource policy) is collapsed into validator_refused, so no policy leaks. The
// initiator reads the peer's code with reason.FromPeer.
func TestRefusalAlertNamesThePresentedGrant(t *testing.T) {
	cases := []struct {
		refusal reason.Code
		alert   reason.Code
	}{
		{reason.GrantRevoked, reason.GrantRevoked},
		{reason.GrantBadIssuer, reason.GrantBadIssuer},
		{reason.GrantBadSignature, reason.GrantBadSignature},
		{reason.GrantExpired, reason.GrantExpired},
		{reason.GrantWrongSubject, reason.GrantWrongSubject},
		{reason.MalformedGrants, reason.MalformedGrants},
		{reason.Blocked, reason.ValidatorRefused},
		{reason.GeoDenied, reason.ValidatorRefused},
		{reason.OutsideTimeWindow, reason.ValidatorRefused},
		{reason.RateLimited, reason.ValidatorRefused},
		{"", reason.ValidatorRefused},
	}
	for _, c := range cases {
		t.Run(string(c.alert)+"/"+string(c.refusal), func(t *testing.T) {
			a, b := newAgent(t), newAgent(t)
			b.cfg.Validator = ValidatorFunc(func(context.Context, *Peer) error {
				if c.refusal == "" {
					return errors.New("no code")
				}
				return coded{c.refusal}
			})
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
			if reason.Of(errB) != reason.ValidatorRefused {
				t.Fatalf("responder: %v, want validator_refused (its audit code is unchanged)", errB)
			}
			expectAlert(t, "initiator", errA, c.alert)
			if got, ok := reason.FromPeer(errA); !ok || got != c.alert {
				t.Fatalf("initiator: FromPeer(%v) = %q %v, want %q", errA, got, ok, c.alert)
			}
		})
	}
}
