package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/api"
)

// TestConnectWithSessionOpen (issue 18, defect 4): peers connect ADDR --id ID while a session with ID is
// open does not pretend to have connected to ADDR: it says ADDR was not dialled and stores it as the
// address to re-dial ID at (peers shows it).
func TestConnectWithSessionOpen(t *testing.T) {
	a, b := newAgent(t, "a", false), newAgent(t, "b", false)
	for _, x := range []*agent{a, b} {
		x.writeConfig(agentConfig{Transports: []string{"tcp"}})
		x.start()
	}
	if out, code := b.run("peers", "connect", a.dialAddr("tcp"), "--id", a.id); code != 0 || !strings.HasPrefix(out, "connected to ") {
		t.Fatalf("first connect: exit %d\n%s", code, out)
	}
	const garbage = "127.0.0.1:1"
	out, code := b.run("peers", "connect", garbage, "--id", a.id)
	if code != 0 || !strings.Contains(out, "already connected to "+a.id) || !strings.Contains(out, garbage+" was not dialled") {
		t.Fatalf("connect with a session open: exit %d, want 0 and 'already connected ... %s was not dialled'\n%s", code, garbage, out)
	}
	var peers []api.PeerStatus
	b.ctlJSON(&peers, "peers")
	found := false
	for _, p := range peers {
		if p.ID == a.id && p.Target != nil {
			for _, ad := range p.Target.Addresses {
				found = found || ad.Address == garbage
			}
		}
	}
	if !found {
		t.Fatalf("peers does not list %s as the address to re-dial %s at: %+v", garbage, a.id, peers)
	}

	// Defect 10: a binary output is summarized in text mode, never dumped; --out writes its bytes.
	in := make([]byte, 64<<10)
	for i := range in {
		in[i] = byte(i*7 + i>>8)
	}
	inPath := filepath.Join(t.TempDir(), "in.bin")
	if err := os.WriteFile(inPath, in, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = b.run("task", "submit", "--to", a.id, "--handler", "echo", "--input", inPath, "--wait")
	if code != 0 || !strings.Contains(out, "65536 bytes, not shown") || len(out) > 4096 {
		t.Fatalf("binary output in text mode: exit %d, %d bytes printed, want a summary\n%.2000s", code, len(out), out)
	}
	outPath := filepath.Join(t.TempDir(), "out.bin")
	if out, code := b.run("task", "submit", "--to", a.id, "--handler", "echo", "--input", inPath, "--wait", "--out", outPath); code != 0 || !strings.Contains(out, "written to "+outPath) {
		t.Fatalf("--out: exit %d\n%.2000s", code, out)
	}
	if got, err := os.ReadFile(outPath); err != nil || !bytes.Equal(got, in) {
		t.Fatalf("--out wrote %d bytes (%v), want the 65536 input bytes back", len(got), err)
	}
}
