package sandbox

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Mode
		err  bool
	}{{"", Required, false}, {"required", Required, false}, {"best-effort", BestEffort, false}, {"off", Off, false},
		{"Required", "", true}, {"none", "", true}} {
		got, err := ParseMode(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseMode(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestProtectionsString(t *testing.T) {
	for _, tc := range []struct {
		p    Protections
		want string
	}{
		{Protections{Landlock: 7, LandlockNet: true, Seccomp: true, UserNS: true, MountNS: true, PIDNS: true, NoNewPrivs: true,
			CapsDropped: true, UID: 65534, UIDDrop: true}, "landlock v7 (tcp bind), seccomp, userns, mntns, pidns, no_new_privs, caps_dropped, uid 65534"},
		{Protections{Seccomp: true, NoNewPrivs: true, UID: 1000}, "seccomp, no_new_privs, uid 1000"},
		{Protections{Off: true, UID: 0}, "off (unconfined, uid 0)"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

func TestMissingErrorNamesEachProtection(t *testing.T) {
	k := Kernel{LandlockErr: "landlock_create_ruleset: ENOSYS", UserNSErr: "user.max_user_namespaces is 0"}
	missing := map[string]string{}
	for _, n := range All() {
		if why := k.why(n); why != "" {
			missing[n] = why
		}
	}
	err := error(&MissingError{Missing: missing})
	if !errors.Is(err, ErrMissing) {
		t.Fatalf("%v is not ErrMissing", err)
	}
	for _, s := range []string{"landlock (landlock_create_ruleset: ENOSYS)", "userns (no user namespace: user.max_user_namespaces is 0)",
		"mntns", "pidns", "caps_dropped", "best-effort"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%q does not mention %q", err, s)
		}
	}
	if strings.Contains(err.Error(), "seccomp") {
		t.Errorf("%q names seccomp, which is available", err)
	}
}
