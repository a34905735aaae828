// Package sandbox confines a transport plugin process from its first instruction (ADR 0040).
//
// Go cannot run code between fork and exec, so the host starts a small trampoline instead of the
// plugin: its own executable (/proc/self/exe) with a hidden argv[0], caught by this package's init
// before main runs. The trampoline is born in new user, mount and PID namespaces (the user namespace
// maps its root to an unprivileged host uid: a dedicated account when the daemon is root or holds
// CAP_SETUID, CAP_SETGID and CAP_CHOWN, the daemon's own uid otherwise). It builds an empty read-only root (a tmpfs) holding only what the plugin needs
// (the go-plugin socket directory, the dynamic loader and libraries, name-service files), pivots into
// it and detaches the old root, drops every capability, sets no_new_privs, applies a Landlock ruleset
// (execute only the plugin and its loader, write only the socket directory, no signals or abstract
// sockets outside the sandbox, TCP bind only to the configured ports) and a seccomp allow-list, reports
// what it applied to the host on a pipe, and executes the plugin from the descriptor whose SHA-256 the
// host checked.
//
// Each protection is reported (Protections); with Mode Required a protection the kernel lacks stops
// the plugin with an error naming it (MissingError); nothing falls back silently.
package sandbox

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Mode says what happens when the kernel lacks a protection.
type Mode string

const (
	// Required refuses to start the plugin when a protection is missing (the default on Linux).
	Required Mode = "required"
	// BestEffort starts the plugin with the protections the kernel has, and reports which are missing.
	BestEffort Mode = "best-effort"
	// Off starts the plugin unconfined, as the agent's own uid (tests, debugging; logged loudly).
	Off Mode = "off"
)

// ParseMode checks a configured mode; "" is Required.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", Required:
		return Required, nil
	case BestEffort, Off:
		return Mode(s), nil
	}
	return "", fmt.Errorf("sandbox mode %q: want %q, %q or %q", s, Required, BestEffort, Off)
}

// Names of the protections, as reported in status, metrics and the audit log.
const (
	UserNS     = "userns"
	MountNS    = "mntns"
	PIDNS      = "pidns"
	NoNewPrivs = "no_new_privs"
	Seccomp    = "seccomp"
	Landlock   = "landlock"
	CapsDrop   = "caps_dropped"
	UIDDrop    = "uid_drop"
)

// All lists every protection name, in report order.
var allNames = []string{Landlock, Seccomp, UserNS, MountNS, PIDNS, NoNewPrivs, CapsDrop, UIDDrop}

// All returns every protection name, in report order.
func All() []string { return append([]string(nil), allNames...) }

// ErrMissing: a required protection is not available; the plugin was not started.
var ErrMissing = errors.New("sandbox protection missing")

// ErrFailed: the trampoline could not apply a protection it was asked for; the plugin was not started.
var ErrFailed = errors.New("sandbox setup failed")

// Kernel is what the running kernel (and the daemon's privileges) offer. An empty *Err means available.
type Kernel struct {
	// LandlockABI is the Landlock ABI version (0: none), LandlockErr why not.
	LandlockABI int    `json:"landlock_abi"`
	LandlockErr string `json:"landlock_err,omitempty"`
	// Seccomp filters can be installed; SeccompErr why not.
	SeccompErr string `json:"seccomp_err,omitempty"`
	// UserNSErr says why a user namespace (and with it mount and PID namespaces) cannot be created.
	UserNSErr string `json:"userns_err,omitempty"`
	// NoNewPrivsErr says why PR_SET_NO_NEW_PRIVS is unavailable.
	NoNewPrivsErr string `json:"no_new_privs_err,omitempty"`
}

// why returns why protection name is unavailable on k ("" if available).
func (k Kernel) why(name string) string {
	switch name {
	case Landlock:
		if k.LandlockABI <= 0 {
			if k.LandlockErr == "" {
				return "the kernel has no Landlock"
			}
			return k.LandlockErr
		}
	case Seccomp:
		return k.SeccompErr
	case UserNS, MountNS, PIDNS, CapsDrop:
		if k.UserNSErr != "" {
			return "no user namespace: " + k.UserNSErr
		}
	case NoNewPrivs:
		return k.NoNewPrivsErr
	}
	return ""
}

// MissingError names the protections Required mode lacks and why.
type MissingError struct {
	Missing map[string]string // protection -> why
}

func (e *MissingError) Error() string {
	names := make([]string, 0, len(e.Missing))
	for n := range e.Missing {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + " (" + e.Missing[n] + ")"
	}
	return fmt.Sprintf("%s: %s; the plugin was not started (set transports[].sandbox: best-effort to run it with what the kernel offers)",
		ErrMissing, strings.Join(parts, ", "))
}

func (e *MissingError) Unwrap() error { return ErrMissing }

// Protections is what was applied to one plugin process.
type Protections struct {
	Landlock    int  `json:"landlock"` // ABI version applied, 0 none
	LandlockNet bool `json:"landlock_net,omitempty"`
	Seccomp     bool `json:"seccomp"`
	UserNS      bool `json:"userns"`
	MountNS     bool `json:"mntns"`
	PIDNS       bool `json:"pidns"`
	NoNewPrivs  bool `json:"no_new_privs"`
	CapsDropped bool `json:"caps_dropped"`
	// UID and GID are the plugin's host credentials; UIDDrop says they differ from a root daemon's.
	UID     int  `json:"uid"`
	GID     int  `json:"gid"`
	UIDDrop bool `json:"uid_drop"`
	// Off: the sandbox was turned off (Mode Off); nothing above applies.
	Off bool `json:"off,omitempty"`
	// NetNS (exec handlers only): a network namespace of its own, without network. Limits: the
	// resource limits (ExecConfinement.Limits) were set.
	NetNS  bool `json:"netns,omitempty"`
	Limits bool `json:"limits,omitempty"`
}

// Has reports whether protection name was applied.
func (p Protections) Has(name string) bool {
	switch name {
	case Landlock:
		return p.Landlock > 0
	case Seccomp:
		return p.Seccomp
	case UserNS:
		return p.UserNS
	case MountNS:
		return p.MountNS
	case PIDNS:
		return p.PIDNS
	case NoNewPrivs:
		return p.NoNewPrivs
	case CapsDrop:
		return p.CapsDropped
	case UIDDrop:
		return p.UIDDrop
	}
	return false
}

// String is the one-line summary shown by agentctl status, e.g.
// "landlock v7, seccomp, userns, mntns, pidns, no_new_privs, caps_dropped, uid 65534".
func (p Protections) String() string {
	if p.Off {
		return "off (unconfined, uid " + strconv.Itoa(p.UID) + ")"
	}
	var parts []string
	for _, n := range allNames {
		if !p.Has(n) || n == UIDDrop {
			continue
		}
		if n == Landlock {
			s := "landlock v" + strconv.Itoa(p.Landlock)
			if p.LandlockNet {
				s += " (tcp bind)"
			}
			parts = append(parts, s)
			continue
		}
		parts = append(parts, n)
	}
	parts = append(parts, "uid "+strconv.Itoa(p.UID))
	return strings.Join(parts, ", ")
}
