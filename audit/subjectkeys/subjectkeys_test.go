package subjectkeys

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/internal/sealbox"
)

func openDB(t *testing.T, path string) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// TestKeyLookupDestroy: a subject's key is made once, found by its reference after a reopen, sealed
// under the data key, and gone for
// good once destroyed, across a reopen too; another data key opens nothing.
func TestKeyLookupDestroy(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	box, _ := sealbox.New(sealbox.NewKey())
	db := openDB(t, path)
	s, err := New(db, box)
	if err != nil {
		t.Fatal(err)
	}
	const alice, bob = "ed25519:alice", "ed25519:bob"
	ref, kb, err := s.Key(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	if again, _, _ := s.Key(ctx, alice); again != ref {
		t.Fatalf("second Key: %s, want %s", again, ref)
	}
	bref, _, _ := s.Key(ctx, bob)
	ct := kb.Seal([]byte("p"), []byte("192.0.2.1"))
	db.Close()

	db = openDB(t, path)
	s, _ = New(db, box)
	got, ok, err := s.Lookup(ref)
	if err != nil || !ok {
		t.Fatalf("Lookup after reopen: %v %v", ok, err)
	}
	if pt, err := got.Open([]byte("p"), ct); err != nil || string(pt) != "192.0.2.1" {
		t.Fatalf("the key found does not open: %v", err)
	}
	if r, ok, _ := s.Ref(alice); !ok || r != ref {
		t.Fatalf("Ref: %s %v", r, ok)
	}
	if d, ok, err := s.Destroy(alice); err != nil || !ok || d != ref {
		t.Fatalf("Destroy: %s %v %v", d, ok, err)
	}
	if _, ok, _ := s.Lookup(ref); ok {
		t.Fatal("the destroyed key is still found")
	}
	if _, ok, _ := s.Destroy(alice); ok {
		t.Fatal("destroyed twice")
	}
	db.Close()

	db = openDB(t, path)
	s, _ = New(db, box)
	if _, ok, _ := s.Lookup(ref); ok {
		t.Fatal("the destroyed key came back after a reopen")
	}
	if _, ok, _ := s.Lookup(bref); !ok {
		t.Fatal("bob's key was lost")
	}
	// Under another data key (state.db restored without its key) the keys are lost, and replaced.
	other, _ := sealbox.New(sealbox.NewKey())
	lost, _ := New(db, other)
	if _, ok, err := lost.Lookup(bref); ok || err != nil {
		t.Fatalf("another data key opened a subject key: %v %v", ok, err)
	}
	if nref, _, err := lost.Key(ctx, bob); err != nil || nref == bref {
		t.Fatalf("a lost key is not replaced: %s %v", nref, err)
	}
	db.Close()
}

// TestInterimBox: the interim data key is made once, 0600, and read back.
func TestInterimBox(t *testing.T) {
	home := t.TempDir()
	a, err := InterimBox(home)
	if err != nil {
		t.Fatal(err)
	}
	b, err := InterimBox(home)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := b.Open([]byte("x"), a.Seal([]byte("x"), []byte("v"))); err != nil || string(pt) != "v" {
		t.Fatal("a second InterimBox has another key")
	}
	fi, err := os.Stat(filepath.Join(home, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
}

// FuzzDecodeEntry: the stored entry decoder never panics and accepts only what encode writes.
func FuzzDecodeEntry(f *testing.F) {
	f.Add(encode(entry{ref: "sk1:AAAAAAAAAAAAAAAAAAAAAA", key: make([]byte, sealbox.KeySize)}))
	f.Add([]byte("sk1:"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decode(b)
		if err == nil && !bytes.Equal(encode(e), b) {
			t.Fatalf("decode(%q) re-encodes differently", b)
		}
	})
}
