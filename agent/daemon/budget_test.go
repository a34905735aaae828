package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// budgetLines bounds the lines of this package's non-test files (as `wc -l` counts them). agent/daemon is
// the composition root (ADR 0068): Start builds the rooms and passes them to each other, Shutdown and
// Reload run their lifecycle, control.go lists the rooms' control-API services. It was 1,197 lines when
// the transport plugins, the session configuration, the reload's classification, the bootstrap targets,
// the identity reloads and the state stores still lived here; they moved to agent/plugins, agent/authz,
// agent/config, agent/api/peerops, agent/custody and agent/state, which left 678 (695 with the identity
// schedule's wiring, ADR 0090). The budget leaves room for a few lines of wiring per new room, not for
// logic: a change that needs more moves logic into its room (with its own tests) instead of raising this
// number.
const budgetLines = 720

func TestCompositionRootBudget(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	total, counted := 0, 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		n := bytes.Count(b, []byte("\n"))
		t.Logf("%5d %s", n, f)
		total += n
		counted++
	}
	if counted == 0 {
		t.Fatal("no source file found: the test must run in agent/daemon")
	}
	if total > budgetLines {
		t.Fatalf("agent/daemon has %d non-test lines, over its budget of %d: move the logic you added into the room it belongs to (ADR 0068)", total, budgetLines)
	}
}
