package reason

import "errors"

// HandshakeRefusalAlerts are the refusals a responder names in its alert, in place of
// validator_refused, when its validator refuses a handshake (docs/protocol.md 5.5; docs/adr/0087): they
// are about the grants the initiator presented itself, so the initiator can act on them (remove the
// grant, ask its issuer for a new one) and they tell it nothing of the responder's policy that it does
// not already hold. Every other refusal (the trust level, the resource policy: geo, time window, rate,
// quota; the admission puzzle) is collapsed into validator_refused on the wire and named only in the
// responder's log and audit record.
var HandshakeRefusalAlerts = []Code{GrantExpired, GrantRevoked, GrantBadIssuer, GrantBadSignature, GrantWrongSubject, MalformedGrants}

// PublicRefusal reports whether c is one of HandshakeRefusalAlerts.
func PublicRefusal(c Code) bool {
	for _, k := range HandshakeRefusalAlerts {
		if k == c {
			return true
		}
	}
	return false
}

// Refusal is implemented by a validator's refusal that carries its code (agent/authz's refusals): the
// handshake fails with validator_refused and, when the code is public (PublicRefusal), the alert names it.
type Refusal interface {
	error
	RefusalCode() Code
}

// RefusalCode returns the code of the first Refusal in err's chain ("" when there is none).
func RefusalCode(err error) Code {
	var r Refusal
	if errors.As(err, &r) {
		return r.RefusalCode()
	}
	return ""
}

// peerCode is the code a peer sent in an alert: information, not trusted (it only ever ends a connection).
type peerCode struct{ code Code }

func (p *peerCode) Error() string { return string(p.code) }

// FromPeerCode wraps the code a peer's alert carried, for FromPeer. It matches no local code with
// errors.Is: a peer's "timeout" is not this agent's timeout.
func FromPeerCode(c Code) error { return &peerCode{code: c} }

// FromPeer returns the code of the peer's alert in err's chain (a peer_alert failure), and whether there
// is one.
func FromPeer(err error) (Code, bool) {
	var p *peerCode
	if errors.As(err, &p) {
		return p.code, true
	}
	return "", false
}
