package rbac

import (
	"errors"
	"fmt"

	"github.com/custos-agent/custos/reason"
)

// Reason is the stable code of an access denial: it goes to the error response, the audit record and the
// metric label, and never changes meaning. A Reason is itself an error, so callers test a denial with
// errors.Is(err, rbac.GrantExpired).
type Reason string

// Error makes a Reason usable as an errors.Is target.
func (r Reason) Error() string { return string(r) }

// The denial reasons.
const (
	// NoGrant: the subject holds no grant at all (or, on the control socket, its uid/gid maps to no role).
	NoGrant = Reason(reason.NoGrant) // "no_grant"
	// GrantExpired: the grant that would give the permission has expired.
	GrantExpired = Reason(reason.GrantExpired) // "grant_expired"
	// GrantRevoked: the grant that would give the permission was revoked by an administrator.
	GrantRevoked = Reason(reason.GrantRevoked) // "grant_revoked"
	// GrantBadIssuer: the grant is signed by an agent that is not a configured system administrator.
	GrantBadIssuer = Reason(reason.GrantBadIssuer) // "grant_bad_issuer"
	// GrantBadSignature: the grant's signature does not verify under its issuer's key.
	GrantBadSignature = Reason(reason.GrantBadSignature) // "grant_bad_signature"
	// PermissionDenied: the subject's valid roles do not carry the permission.
	PermissionDenied = Reason(reason.PermissionDenied) // "permission_denied"
	// BlockExpired: a block notice past its end (ADR 0101); never a denial of a permission.
	BlockExpired = Reason(reason.BlockExpired) // "block_expired"
)

// AllReasons lists every reason, for documentation and metrics pre-registration.
var AllReasons = []Reason{NoGrant, GrantExpired, GrantRevoked, GrantBadIssuer, GrantBadSignature, PermissionDenied}

// ErrDenied matches every *Denial with errors.Is.
var ErrDenied = errors.New("access denied")

// Denial is a refused authorization: who, what, why.
type Denial struct {
	Reason     Reason
	Subject    string     // agent ID, or "uid=N gid=M" on the control socket
	Permission Permission // "" when refusing a grant itself (AddGrant)
	GrantID    string     // the grant the reason is about, when there is one
	Detail     string     // a sentence for a human: what was wrong and what to do
}

// Error reads "access denied: <reason>: <detail>".
func (d *Denial) Error() string {
	s := "access denied: " + string(d.Reason)
	if d.Detail != "" {
		s += ": " + d.Detail
	}
	return s
}

// Is matches ErrDenied and the denial's Reason.
func (d *Denial) Is(target error) bool {
	if target == ErrDenied {
		return true
	}
	r, ok := target.(Reason)
	return ok && r == d.Reason
}

// ReasonOf returns the reason of a denial in err's chain, or "" when err is not a denial.
func ReasonOf(err error) Reason {
	var d *Denial
	if errors.As(err, &d) {
		return d.Reason
	}
	return ""
}

func deny(r Reason, subject string, p Permission, grantID, format string, args ...any) *Denial {
	return &Denial{Reason: r, Subject: subject, Permission: p, GrantID: grantID, Detail: fmt.Sprintf(format, args...)}
}
