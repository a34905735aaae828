package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if db.Peers == nil || db.Tasks == nil || db.Grants == nil || db.Held == nil || db.Stakes == nil || db.Evidence == nil || db.GatewayKeys == nil {
		t.Fatalf("a store is missing: %+v", db)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state.db mode: %v %v", fi.Mode(), err)
	}
	// A second handle (another agent on this home) is refused, saying why.
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), path+" is locked by another process: is an agent already running for this home?") {
		t.Fatalf("second open: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed, it opens again with what it held.
	db, err = Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	_ = db.Close()
	// A file that is not a database is an error naming it, and is left as it was.
	bad := filepath.Join(t.TempDir(), "state.db")
	junk := []byte(strings.Repeat("not a bbolt file\n", 512))
	if err := os.WriteFile(bad, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bad); err == nil || !strings.Contains(err.Error(), "open "+bad) {
		t.Fatalf("junk file: %v", err)
	}
	if got, _ := os.ReadFile(bad); string(got) != string(junk) {
		t.Fatal("a file that is not a database was changed")
	}
}
