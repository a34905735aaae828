package host

import (
	"errors"

	"github.com/custos-agent/custos/reason"
)

// Codes of the transport domain (reason/registry.go): why the host refused a connection before the agent
// handshake (audit auth.failure details "reason", metric label).
const (
	CodeBadBinding   = string(reason.BadBinding)   // the connection's transport binding does not verify
	CodePeerMismatch = string(reason.PeerMismatch) // the peer on the connection is not the one dialled
)

// RefusalCode is the code of a connection the host refused with err (Observer.PeerRefused):
// CodePeerMismatch for ErrPeerMismatch, else CodeBadBinding.
func RefusalCode(err error) string {
	if errors.Is(err, ErrPeerMismatch) {
		return CodePeerMismatch
	}
	return CodeBadBinding
}
