package reason

import (
	"regexp"
	"slices"
	"testing"
)

// TestRegistryUnique: no code string is registered twice (a string shared by domains is one entry with
// one meaning), every entry names known domains and says what it means, and every code is usable as a
// metric label.
func TestRegistryUnique(t *testing.T) {
	known := []Domain{DomainProtocol, DomainRBAC, DomainPolicy, DomainAdmission, DomainTransport, DomainTask, DomainControl, DomainGateway, DomainDiscovery}
	label := regexp.MustCompile(`^[a-z][a-z0-9_]{0,47}$`)
	seen := map[Code]bool{}
	for _, e := range Registry() {
		if seen[e.Code] {
			t.Errorf("code %q is registered twice: give one entry the domains that share its meaning, or pick another string", e.Code)
		}
		seen[e.Code] = true
		if !label.MatchString(string(e.Code)) {
			t.Errorf("code %q is not a valid metric label value", e.Code)
		}
		if e.Description == "" || len(e.Domains) == 0 {
			t.Errorf("code %q has no description or no domain", e.Code)
		}
		for i, d := range e.Domains {
			if !slices.Contains(known, d) || slices.Contains(e.Domains[:i], d) {
				t.Errorf("code %q: domain %q unknown or listed twice", e.Code, d)
			}
		}
		if got, ok := Lookup(string(e.Code)); !ok || got.Code != e.Code {
			t.Errorf("Lookup(%q) = %v, %v", e.Code, got, ok)
		}
	}
	if Registered("made_up") {
		t.Error("an unregistered string is reported registered")
	}
	for _, d := range known {
		if len(InDomain(d)) == 0 {
			t.Errorf("domain %q has no codes", d)
		}
	}
	if !slices.Equal(InDomain(DomainProtocol), All) {
		t.Errorf("the protocol domain %v is not reason.All %v", InDomain(DomainProtocol), All)
	}
}

// The codes a responder names in a handshake alert in place of validator_refused (ADR 0087) are
// registered, travel to peers, and are none of the policy's or the trust level's.
func TestHandshakeRefusalAlertsRegistered(t *testing.T) {
	for _, c := range HandshakeRefusalAlerts {
		e, ok := Lookup(string(c))
		if !ok || !e.Wire {
			t.Errorf("%s: registered %v, wire %v", c, ok, e.Wire)
		}
		for _, d := range e.Domains {
			if d == DomainPolicy {
				t.Errorf("%s is a policy code: the policy's refusals are collapsed into validator_refused", c)
			}
		}
		if c == Blocked || c == BadPuzzle {
			t.Errorf("%s must be collapsed into validator_refused", c)
		}
	}
	err := Wrap(PeerAlert, FromPeerCode(Timeout), "the peer refused the handshake")
	if got, ok := FromPeer(err); !ok || got != Timeout || Of(err) != PeerAlert {
		t.Fatalf("FromPeer %q %v, Of %q", got, ok, Of(err))
	}
	if err.Error() != "peer_alert: the peer refused the handshake: timeout" {
		t.Fatalf("the error reads %q, as before ADR 0087", err.Error())
	}
}
