package reason_test

import (
	"slices"
	"testing"

	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/discovery"
	"github.com/custos-agent/custos/agent/policy"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports/host"
)

// TestDomainsRegistered: every code a domain's package declares is registered in that domain with the
// same string, and the registry lists no code of the domain that the package does not declare.
func TestDomainsRegistered(t *testing.T) {
	strs := func(vs ...string) []string { return vs }
	var rb, po, di []string
	task := strs(tasks.CodeUnknownHandler, tasks.CodeBadRequest, tasks.CodeBusy, tasks.CodeDenied, tasks.CodeInternal, tasks.CodeTimeout, tasks.CodeCancelled)
	for _, r := range tasks.LimitReasons {
		task = append(task, string(r))
	}
	for _, c := range discovery.Codes {
		di = append(di, string(c))
	}
	for _, r := range rbac.AllReasons {
		rb = append(rb, string(r))
	}
	for _, r := range policy.AllReasons {
		po = append(po, string(r))
	}
	for _, tc := range []struct {
		domain reason.Domain
		codes  []string
	}{
		{reason.DomainRBAC, rb},
		{reason.DomainPolicy, po},
		{reason.DomainTask, task},
		{reason.DomainControl, strs(control.CodeErasureIncomplete, control.CodeBadRequest, control.CodeUnknownOp, control.CodeDenied, control.CodeNotFound,
			control.CodeUnavailable, control.CodeTimeout, control.CodeFailed, control.CodeTooLarge, control.CodeRefused)},
		{reason.DomainAdmission, strs(authz.RefusalBadPuzzle, authz.RefusalBlocked, authz.RefusalMalformedGrants,
			authz.RefusalGrantWrongSubject, authz.ReasonUncorrelated, authz.RefusalAuditUnavailable, authz.ReasonExecutorNotPermitted)},
		{reason.DomainTransport, strs(host.CodeBadBinding, host.CodePeerMismatch)},
		{reason.DomainDiscovery, di},
	} {
		var reg []string
		for _, c := range reason.InDomain(tc.domain) {
			reg = append(reg, string(c))
		}
		for _, c := range tc.codes {
			e, ok := reason.Lookup(c)
			if !ok || !slices.Contains(e.Domains, tc.domain) {
				t.Errorf("%s code %q is not registered in domain %s (entry %+v)", tc.domain, c, tc.domain, e)
			}
		}
		for _, c := range reg {
			if !slices.Contains(tc.codes, c) {
				t.Errorf("domain %s registers %q, which its package does not declare", tc.domain, c)
			}
		}
	}
}
