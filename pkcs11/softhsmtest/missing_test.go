package softhsmtest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

const fakeMissing = "CUSTOS_SOFTHSMTEST_FAKE_MISSING"

// TestMain lets TestMissingSoftHSM run this binary with the SoftHSM module made unfindable.
func TestMain(m *testing.M) {
	if os.Getenv(fakeMissing) != "" {
		moduleCandidates = []string{"/nonexistent/softhsm/libsofthsm2.so"}
	}
	os.Exit(m.Run())
}

// A missing SoftHSM skips outside CI and fails under CI=true: never a silent pass.
func TestMissingSoftHSM(t *testing.T) {
	if os.Getenv(fakeMissing) != "" {
		t.Skip("running as the child of TestMissingSoftHSM")
	}
	for _, ci := range []string{"true", ""} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestNewToken$", "-test.v", "-test.count=1")
		var env []string
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, "CI=") {
				env = append(env, e)
			}
		}
		cmd.Env = append(env, fakeMissing+"=1", "CI="+ci)
		out, err := cmd.CombinedOutput()
		if ci == "true" {
			if err == nil || !strings.Contains(string(out), "is missing and CI=true requires it") || !strings.Contains(string(out), "softhsm2") {
				t.Errorf("CI=true with SoftHSM missing: err=%v, output:\n%s", err, out)
			}
			continue
		}
		if err != nil || !strings.Contains(string(out), "--- SKIP: TestNewToken") || !strings.Contains(string(out), "under CI=true this fails") {
			t.Errorf("CI unset with SoftHSM missing: err=%v, output:\n%s", err, out)
		}
	}
}
