package peerops

import (
	"fmt"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/reason"
)

// Advice says what the operator of a dialling agent can do about a handshake the peer refused, from the
// code of the peer's alert (reason.FromPeer) and the grants this agent presents (held; the grants named
// are the ones the code can be about). "" when err is not a refusal by the peer. The peer names a
// refusal of the grants this agent presented; it collapses every other refusal of its validator into
// validator_refused (ADR 0087).
func Advice(err error, held []rbac.Grant, now time.Time) string {
	code, ok := reason.FromPeer(err)
	if !ok {
		return ""
	}
	remove := func(gs []rbac.Grant) string {
		switch len(gs) {
		case 0:
			return "'agentctl grant list' shows the grants this agent presents; remove the one at fault with 'agentctl grant remove GRANT_ID'"
		case 1:
			return fmt.Sprintf("remove it with 'agentctl grant remove %s' (issued by %s, role %s)", gs[0].ID, gs[0].Issuer, gs[0].Role)
		}
		var ids []string
		for _, g := range gs {
			ids = append(ids, g.ID)
		}
		return fmt.Sprintf("remove it with 'agentctl grant remove GRANT_ID' (this agent presents %s; 'agentctl grant list' shows their issuers)", strings.Join(ids, ", "))
	}
	switch code {
	case reason.GrantBadIssuer:
		return "the peer does not accept the issuer of a grant this agent presents (not one of its authorization.admins): " +
			remove(held) + ", or ask the peer's operator to list the issuer under authorization.admins"
	case reason.GrantRevoked:
		return "a grant this agent presents was revoked by its issuer: " + remove(held)
	case reason.GrantBadSignature:
		return "a grant this agent presents does not verify under its issuer's key (altered, or signed by a key its issuer has since replaced by recovery): " +
			remove(held) + " and ask the issuer for a new one"
	case reason.GrantExpired:
		var expired []rbac.Grant
		for _, g := range held {
			if g.Expires <= now.Unix() {
				expired = append(expired, g)
			}
		}
		if len(expired) == 0 {
			expired = held // the peer's clock is ahead of this agent's
		}
		return "a grant this agent presents has expired: ask its issuer for a new one ('agentctl grant install FILE'), and " + remove(expired)
	case reason.GrantWrongSubject:
		return "a grant this agent presents names another agent: " + remove(held)
	case reason.MalformedGrants:
		return "the peer could not decode the grants this agent presents: " + remove(held)
	case reason.ValidatorRefused:
		return "the peer's authorization refused this agent (its trust level or resource policy: the peer does not say which); its operator sees why in its log and audit (auth.failure)"
	}
	return ""
}
