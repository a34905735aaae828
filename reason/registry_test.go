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
