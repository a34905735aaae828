package rbac

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// PeerCred returns the kernel's record of who is at the other end of a unix socket connection
// (SO_PEERCRED: uid, gid and pid at connect time). The control socket calls it on every accepted
// connection and passes the result to Authorizer.AuthorizeLocal.
func PeerCred(c *net.UnixConn) (Cred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var uc *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		uc, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("peer credentials (SO_PEERCRED): %w", serr)
	}
	return Cred{UID: uc.Uid, GID: uc.Gid, PID: uc.Pid}, nil
}
