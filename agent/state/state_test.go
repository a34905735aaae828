package state

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/atrest"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
)

// source is an identity keystore for atrest.ForHome: a software keystore with passphrase pass, or no
// wrapper at all when pass is empty.
type source struct {
	w   keystore.DataKeyWrapper
	uri string
}

func (s source) DataKeyWrapper(context.Context) (keystore.DataKeyWrapper, string, error) {
	return s.w, s.uri, nil
}

func newSource(t *testing.T, pass string) source {
	t.Helper()
	if pass == "" {
		return source{uri: "pkcs11:token=none"}
	}
	root := t.TempDir()
	pf := filepath.Join(root, "pass")
	if err := os.WriteFile(pf, []byte(pass), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := software.KeystoreURI(filepath.Join(root, "keys"), "file:"+pf, software.MinWorkFactor)
	ks, err := software.Open(context.Background(), uri, keystore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	return source{ks.(keystore.DataKeyWrapper), uri}
}

// Open opens with one test keystore (the tests below reopen the same home with it).
func (s source) open(path string) (*DB, error) {
	return Open(context.Background(), path, s, slog.New(slog.DiscardHandler))
}

// TestOpenSealed: the first open makes state.key and a Box; the same keystore reopens it, another is
// refused with the error that says the state is sealed to another keystore; a keystore that cannot wrap
// keeps the state in the clear.
func TestOpenSealed(t *testing.T) {
	home := t.TempDir()
	path := filepath.Join(home, "state.db")
	src := newSource(t, "right")
	db, err := src.open(path)
	if err != nil {
		t.Fatal(err)
	}
	if db.Box == nil {
		t.Fatal("no Box with a keystore that wraps data keys")
	}
	sealed := db.Box.Seal([]byte("x"), []byte("y"))
	_ = db.Close()
	if _, err := os.Stat(filepath.Join(home, atrest.File)); err != nil {
		t.Fatal(err)
	}
	db, err = src.open(path)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := db.Box.Open([]byte("x"), sealed); err != nil || string(v) != "y" {
		t.Fatalf("reopened Box: %q, %v", v, err)
	}
	_ = db.Close()
	for _, other := range []source{newSource(t, "wrong"), newSource(t, "")} {
		if _, err := other.open(path); !errors.Is(err, atrest.ErrSealedElsewhere) {
			t.Fatalf("open with %s: %v, want ErrSealedElsewhere", other.uri, err)
		}
	}
	clear := filepath.Join(t.TempDir(), "state.db")
	db, err = newSource(t, "").open(clear)
	if err != nil || db.Box != nil {
		t.Fatalf("without a wrapper: %v, box %v; want the state in the clear", err, db != nil && db.Box != nil)
	}
	_ = db.Close()
}

func TestOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	src := newSource(t, "passphrase")
	db, err := src.open(path)
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
	if _, err := src.open(path); err == nil || !strings.Contains(err.Error(), path+" is locked by another process: is an agent already running for this home?") {
		t.Fatalf("second open: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed, it opens again with what it held.
	db, err = src.open(path)
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
	if _, err := src.open(bad); err == nil || !strings.Contains(err.Error(), "open "+bad) {
		t.Fatalf("junk file: %v", err)
	}
	if got, _ := os.ReadFile(bad); string(got) != string(junk) {
		t.Fatal("a file that is not a database was changed")
	}
}
