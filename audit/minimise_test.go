package audit

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-agent/custos/internal/privacy"
	"github.com/custos-agent/custos/keystore"
)

// TestAppendMinimisesAddresses (ADR 0082): with Options.Addresses set, the remote address in a
// record's details, its subject and an error sentence reach the file truncated (IPv4 /24, IPv6 /48);
// the log verifies; with Full they are kept whole.
func TestAppendMinimisesAddresses(t *testing.T) {
	for _, full := range []bool{false, true} {
		id := newIdent(t, keystore.Ed25519, 0)
		dir := filepath.Join(t.TempDir(), "audit")
		o := id.opts(0)
		o.Addresses = &privacy.Addresses{Full: full}
		l := open(t, dir, o)
		if _, err := l.Append(context.Background(), Record{Type: AuthFailure, Actor: "", Subject: "198.51.100.23:9", Outcome: OutcomeFailure,
			Details: map[string]any{"reason": "timeout", "transport": "tcp", "remote": "192.0.2.77:7400",
				"error": "dial [2001:db8:1:2::9]:443: refused"}}); err != nil {
			t.Fatal(err)
		}
		closeLog(t, l)
		mustVerify(t, dir, id.kel)
		var raw strings.Builder
		for _, p := range segPaths(t, dir) {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			raw.Write(b)
		}
		for _, whole := range []string{"192.0.2.77", "198.51.100.23", "2001:db8:1:2::9"} {
			if strings.Contains(raw.String(), whole) != full {
				t.Errorf("full=%v: %q in the file: %v", full, whole, strings.Contains(raw.String(), whole))
			}
		}
		if !full {
			for _, cut := range []string{"192.0.2.0/24:7400", "198.51.100.0/24:9", "2001:db8:1::/48"} {
				if !strings.Contains(raw.String(), cut) {
					t.Errorf("%q not in the file", cut)
				}
			}
		}
	}
}
