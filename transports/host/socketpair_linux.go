package host

import (
	"os"
	"syscall"
)

// socketPair returns both ends of a new unix socket pair of type typ (SOCK_STREAM, SOCK_SEQPACKET),
// close-on-exec.
func socketPair(typ int) (hostEnd, pluginEnd *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, typ|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	return os.NewFile(uintptr(fds[0]), "custos-data-host"), os.NewFile(uintptr(fds[1]), "custos-data-plugin"), nil
}
