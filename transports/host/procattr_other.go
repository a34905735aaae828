//go:build !linux

package host

import (
	"os"
	"os/exec"
)

func setProcAttr(*exec.Cmd) {}

func ownProcessGroup(*exec.Cmd) {}

func fileOwner(os.FileInfo) (int, bool) { return 0, false }
