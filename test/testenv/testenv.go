// Package testenv decides what a test does when an external part (SoftHSM, swtpm, promtool, openssl) is
// missing: outside CI it skips with a message that says how to install it; under CI=true it fails, so a
// missing simulator can never turn into a silent pass.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips (or, under CI, fails) the test with why and how to fix it.
func Missing(t testing.TB, what, fix string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s is missing and CI=true requires it: %s", what, fix)
	}
	t.Skipf("%s is missing (%s); under CI=true this fails", what, fix)
}

// LookTool returns the absolute path of an executable on PATH, or reports it missing.
func LookTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name, "install the Debian package "+pkg+" (make test does this)")
	}
	return p
}

// FirstFile returns the first of paths that exists, or reports what is missing.
func FirstFile(t testing.TB, what, pkg string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	Missing(t, what, "install the Debian package "+pkg+" (make test does this)")
	return ""
}
