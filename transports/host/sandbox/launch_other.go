//go:build !linux

package sandbox

import (
	"context"
	"errors"
	"os/exec"
)

// DefaultUser is the account plugins run as when the daemon is root and none is configured.
const DefaultUser = "custos-transport"

const unsupported = "plugin sandboxing is implemented for Linux only"

// ProbeKernel reports that nothing is available off Linux.
func ProbeKernel() Kernel {
	return Kernel{LandlockErr: unsupported, SeccompErr: unsupported, UserNSErr: unsupported, NoNewPrivsErr: unsupported}
}

// Options describe one sandboxed launch.
type Options struct {
	Mode      Mode
	Kernel    Kernel
	User      string
	SocketDir string
	BindPorts []uint16
	Path      string
	Exec      *ExecConfinement
}

// Launch is a prepared sandboxed start.
type Launch struct{}

// Wrap refuses every mode but Off off Linux.
func Wrap(_ *exec.Cmd, o Options) (*Launch, error) {
	if o.Mode == Off {
		return nil, nil
	}
	return nil, &MissingError{Missing: map[string]string{UserNS: unsupported, Landlock: unsupported, Seccomp: unsupported}}
}

// Start starts cmd.
func (l *Launch) Start(cmd *exec.Cmd) error { return cmd.Start() }

// Started is never reached off Linux.
func (l *Launch) Started(context.Context) (Protections, error) {
	return Protections{}, errors.New(unsupported)
}

// Abort does nothing off Linux.
func (l *Launch) Abort() {}

// Cleanup does nothing off Linux.
func (l *Launch) Cleanup() {}

// SetNonDumpable does nothing off Linux.
func SetNonDumpable() error { return nil }

// Dumpable reports true off Linux (no way to tell).
func Dumpable() (bool, error) { return true, nil }
