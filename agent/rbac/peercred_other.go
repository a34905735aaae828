//go:build !linux

package rbac

import (
	"errors"
	"net"
)

// PeerCred is only implemented on Linux (SO_PEERCRED); elsewhere every control-socket caller is refused.
func PeerCred(c *net.UnixConn) (Cred, error) {
	return Cred{}, errors.New("peer credentials: SO_PEERCRED is only supported on Linux")
}
