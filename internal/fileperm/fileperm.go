// Package fileperm is the one check of an agent's file permissions: secrets and state belong to their
// owner (files 0600, directories 0700). A secret file other users may read is refused, one its group may
// read is warned about; state files and directories others may reach are warned about at every start.
// Every message names the chmod that fixes it.
package fileperm

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
)

// ErrExposed: a secret file (a PIN, a passphrase) can be read or written by users other than its owner
// and its group.
var ErrExposed = errors.New("secret file readable by other users")

// Private is the mode a private file (0600) or directory (0700) has.
func Private(mode fs.FileMode) fs.FileMode {
	if mode.IsDir() {
		return 0o700
	}
	return 0o600
}

// Open reports whether mode lets the group or other users in (any of 0o077).
func Open(mode fs.FileMode) bool { return mode.Perm()&0o077 != 0 }

// Fix is the command that makes path private: "chmod 600 PATH" or "chmod 700 PATH".
func Fix(path string, mode fs.FileMode) string {
	return fmt.Sprintf("chmod %o %s", Private(mode), path)
}

// who says who besides the owner may use a mode.
func who(mode fs.FileMode) string {
	switch p := mode.Perm(); {
	case p&0o007 != 0 && p&0o002 != 0:
		return "every user can read or write it"
	case p&0o007 != 0:
		return "every user can reach it"
	case p&0o020 != 0:
		return "its group can write it"
	default:
		return "its group can read it"
	}
}

// CheckSecret checks the mode of an open secret file: other users' access is an error (ErrExposed),
// saying the chmod to run; the group's is a warning (returned, for the caller to log). Not regular
// files (a FIFO a secret is piped through) are not checked.
func CheckSecret(path string, fi fs.FileInfo) (warning string, err error) {
	if !fi.Mode().IsRegular() || !Open(fi.Mode()) {
		return "", nil
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("%w: %s has mode %04o (%s): run '%s', and change the secret if another user may have read it",
			ErrExposed, path, fi.Mode().Perm(), who(fi.Mode()), Fix(path, fi.Mode()))
	}
	return fmt.Sprintf("secret file %s has mode %04o (%s): run '%s'", path, fi.Mode().Perm(), who(fi.Mode()), Fix(path, fi.Mode())), nil
}

// Warnings checks paths (state files and directories; missing ones are skipped) and returns one
// warning for each that is not private, naming the chmod to run.
func Warnings(paths ...string) []string {
	var out []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil || !Open(fi.Mode()) {
			continue
		}
		out = append(out, fmt.Sprintf("%s has mode %04o (%s): run '%s'", p, fi.Mode().Perm(), who(fi.Mode()), Fix(p, fi.Mode())))
	}
	return out
}

// Warn logs Warnings(paths...) on log.
func Warn(log *slog.Logger, paths ...string) {
	for _, w := range Warnings(paths...) {
		log.Warn("file permissions: " + w)
	}
}
