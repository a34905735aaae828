package host

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcAttr makes the kernel kill the plugin if the host dies.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// ownProcessGroup puts the plugin in a process group of its own (ADR 0088): a signal to the daemon's
// group (a terminal's Ctrl-C, kill -TERM -PGID) reaches the daemon only, which drains and then stops
// its plugins itself. It is applied after the sandbox has set the command's attributes.
func ownProcessGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		setProcAttr(cmd)
	}
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pgid = true, 0
}

// fileOwner returns the uid owning the file fi describes.
func fileOwner(fi os.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}
